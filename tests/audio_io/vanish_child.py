"""Child process for test_jack.py: the JACK server vanishes under a running Microphone and Speaker.

Run as `python -m tests.audio_io.vanish_child` from the repository root. A PortAudio stream whose
server died can never be stopped (audio_io/streams.py says why), so this cannot run inside pytest's
own process. Prints one JSON line: the errors reported, and how long detection and close took.
"""

import json
import threading
import time

import numpy as np

from audio_io.streams import Microphone, Speaker
from tests.jack_server import point_portaudio_at, start_jackd


def main() -> None:
    server = start_jackd()
    point_portaudio_at(server)
    errors: list[str] = []
    both_reported = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        if len(errors) == 2:
            both_reported.set()

    speaker = Speaker("system", on_error=on_error)
    microphone = Microphone("system", lambda frame, t: speaker.write(frame), on_error=on_error)
    speaker.start()
    microphone.start()
    speaker.write(np.zeros(1920, np.float32))
    time.sleep(0.3)
    frames_before = microphone.frame_count
    killed_at = time.monotonic()
    server.stop()
    reported = both_reported.wait(timeout=5)
    detected_after = time.monotonic() - killed_at
    closing = time.monotonic()
    microphone.close()
    speaker.close()
    close_seconds = time.monotonic() - closing
    result = {
        "server": server.name,
        "reported": reported,
        "errors": errors,
        "microphone_error": microphone.error,
        "speaker_error": speaker.error,
        "frames_before": frames_before,
        "detected_after": detected_after,
        "close_seconds": close_seconds,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
