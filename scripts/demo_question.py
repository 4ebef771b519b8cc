"""Write the demo utterance `antiphon talk` plays as the user's voice on a machine without a
microphone: DEMO_QUESTION spoken by espeak-ng's default English voice, 24 kHz mono FLAC, into
app/assets/ beside the bundled model (app/talk/devices.py reads it).

    .venv/bin/python scripts/demo_question.py       # needs espeak-ng
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.talk.devices import DEMO_QUESTION, DEMO_QUESTION_FILE  # noqa: E402
from tests.app.talk.echo_loop import RATE, espeak  # noqa: E402

LEAD = 0.5  # seconds of silence before the question


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        speech = espeak(DEMO_QUESTION, "en", Path(tmp))  # espeak-ng's default voice, at RATE
    audio = np.concatenate([np.zeros(round(LEAD * RATE), np.float32), speech])
    soundfile.write(DEMO_QUESTION_FILE, audio, RATE, subtype="PCM_16", format="FLAC")
    print(f"wrote {DEMO_QUESTION_FILE}: {len(audio) / RATE:.2f} s, {DEMO_QUESTION!r}")


if __name__ == "__main__":
    main()
