"""The bundled demo model on a real JACK echo loop: does it hear itself, and does the canceller
stop that?

The user asks one question; the model answers, and on loudspeakers its answer comes back into the
microphone. Three runs of the same conversation, the app's side as `antiphon talk` runs it (the
real engine with the bundled model, PortAudio on JACK, the canceller, a recording):

    no echo     the room feeds the user's question only
    echo        the room feeds the question and the model's own voice (40 ms, -10 dB, a room
                response), the canceller off (`--no-echo-cancel`)
    cancelled   the same room, the canceller on (the default)

Measured from each recording: what the model said (its inner-monologue text), how long it spoke,
in how many turns, and how much of that came after its first answer (a model that hears itself
answers its own voice, or keeps talking). docs/echo.md will have the figures once a model is
bundled;

    .venv/bin/python -m tests.app.talk.test_echo_model --runs 3     # nothing else running

prints them for any bundle (`--assets DIR`, an export of another run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from app.core.audio import AudioFormat
from app.core.engine import Engine
from app.core.models import ASSETS, CONFIG_FILE, bundled_model
from app.core.recording import MICROPHONE_WAV, Recorder, read_recording
from app.core.runtime import Conversation
from app.eval.vad import speech_segments
from app.talk.devices import open_devices, open_echo_canceller
from tests.app.talk.echo_loop import FIRST_PATH, FRAME, espeak
from tests.app.talk.echo_room import EchoPath, EchoRoom
from tests.app.talk.test_echo_jack import Devices
from tests.jack_server import JackServer, make_jack_fixture
from tests.jack_server import jack_server as open_jack_server

jack_server = make_jack_fixture()

QUESTION = "What is four plus five?"
ASK_AT = 1.0  # seconds after the loop closes, the user asks
RUN_FOR = 14.0  # seconds after the loop closes, the conversation ends
TURN_GAP = 0.8  # seconds of silence that end one of the model's turns
NO_ECHO = EchoPath(delay=FIRST_PATH.delay, gain_db=-300.0)  # the same room, no sound back
CONDITIONS = {
    "no echo": (NO_ECHO, False),
    "echo": (FIRST_PATH, False),
    "cancelled": (FIRST_PATH, True),
}


@dataclass(frozen=True)
class ModelRun:
    condition: str
    text: str  # the model's inner monologue, the whole run
    speech: float  # seconds the model spoke (voice activity on its channel)
    turns: int  # its stretches of speech, TURN_GAP apart
    after_first: float  # seconds it spoke after its first turn
    text_after_first: str  # what it said then
    dropped: int  # microphone frames the runtime dropped to keep up

    def line(self) -> str:
        return (
            f"{self.condition:>9}: spoke {self.speech:4.1f} s in {self.turns} turn(s), "
            f"{self.after_first:4.1f} s after the first; text {self.text!r}; "
            f"after the first turn {self.text_after_first!r}; dropped {self.dropped} frames"
        )


def _turns(segments: list[tuple[float, float]]) -> list[tuple[float, float]]:
    turns: list[tuple[float, float]] = []
    for a, b in segments:
        if turns and a - turns[-1][1] < TURN_GAP:
            turns[-1] = (turns[-1][0], b)
        else:
            turns.append((a, b))
    return turns


def measure_model_run(folder: Path, condition: str) -> ModelRun:
    """The model's turns from its first one after the user's question starts (voice activity
    on the raw microphone, which holds the question whatever the canceller did), on the
    recording's frame clock (an event's "time" is when its step ended, later than its frame)."""
    recording = read_recording(folder)
    rate = recording.sample_rate
    frame_s = FRAME / rate
    raw, _ = soundfile.read(folder / MICROPHONE_WAV, dtype="float32")
    asked = min((a for a, _ in speech_segments(raw, rate)), default=0.0)
    turns = [t for t in _turns(speech_segments(recording.assistant, rate)) if t[1] > asked]
    texts = [  # what the model said (not what it wrote down it heard)
        (e["frame"] * frame_s, e["text"])
        for e in recording.events
        if e["type"] == "text" and not e.get("heard")
    ]
    frames = [e for e in recording.events if e["type"] == "frame"]
    first_end = turns[0][1] if turns else float("inf")
    return ModelRun(
        condition=condition,
        text="".join(t for _, t in texts).strip(),
        speech=sum(b - a for a, b in turns),
        turns=len(turns),
        after_first=sum(b - a for a, b in turns[1:]),
        text_after_first="".join(t for at, t in texts if at > first_end).strip(),
        dropped=frames[-1]["dropped_input"] if frames else 0,
    )


async def _converse(
    server: JackServer, engine: Engine, folder: Path, path: EchoPath, echo_cancel: bool
) -> None:
    session = Devices()
    audio = AudioFormat(engine.sample_rate, engine.frame_size)
    question = espeak(QUESTION, "en-us+f3", folder) * 0.5
    with EchoRoom(server, path) as room, open_devices(session, audio, print) as (source, sink, _):
        echo = open_echo_canceller(session, audio, source, sink) if echo_cancel else None
        assert echo is not None or not echo_cancel, session.devices
        recorder = Recorder(
            folder, audio, "bundled demo model", engine.sampling, session.devices,
            keep_microphone=True,
        )  # fmt: skip
        session.events.sinks.append(recorder)
        conversation = Conversation(
            engine, source, sink, session.events, session.clock, recorder, echo=echo
        )
        task = asyncio.create_task(conversation.run())
        try:
            while not (
                room.client.get_all_connections("system:capture_1")
                and room.client.get_all_connections("system:playback_1")
            ):
                await asyncio.sleep(0.02)
            room.connect_portaudio()
            start = room.position
            room.say(question, at=start + round(ASK_AT * server.sample_rate))
            while room.position < start + RUN_FOR * server.sample_rate:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            recorder.close()


def run_conditions(
    server: JackServer, engine: Engine, folder: Path, seed: int = 0
) -> dict[str, ModelRun]:
    """The same conversation in each condition, the model's sampling seeded alike."""
    runs = {}
    for condition, (path, echo_cancel) in CONDITIONS.items():
        engine.set_sampling(dataclasses.replace(engine.sampling, seed=seed))
        engine.reset()
        out = folder / condition.replace(" ", "-")
        out.mkdir(parents=True)
        asyncio.run(_converse(server, engine, out, path, echo_cancel))
        runs[condition] = measure_model_run(out, condition)
        print(runs[condition].line())
    return runs


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / CONFIG_FILE).is_file(), reason="no bundled demo model")
def test_the_demo_model_does_not_hear_itself_with_the_canceller(
    jack_server: JackServer, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the demo model is real time on 2 cores, not on the suite's one
    try:
        engine = Engine(bundled_model(torch.device("cpu")))
        engine.warm_up()
        runs = run_conditions(jack_server, engine, tmp_path)
    finally:
        torch.set_num_threads(threads)
    quiet, cancelled = runs["no echo"], runs["cancelled"]
    assert quiet.turns >= 1, "the model did not answer the question at all"
    if any(run.dropped for run in runs.values()):  # a stalled machine: not the canceller's doing
        pytest.skip(f"frames were dropped: {[r.line() for r in runs.values()]}")
    # With the canceller, the model's own voice adds no speech of its own after its answer.
    assert cancelled.after_first <= quiet.after_first + 1.0, [r.line() for r in runs.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=ASSETS, help="a bundle (an export)")
    parser.add_argument("--runs", type=int, default=3, help="seeds per condition")
    args = parser.parse_args()
    engine = Engine(bundled_model(torch.device("cpu"), folder=args.assets))
    engine.warm_up()
    with tempfile.TemporaryDirectory() as tmp, open_jack_server() as server:
        all_runs = [run_conditions(server, engine, Path(tmp) / str(s), s) for s in range(args.runs)]
    for condition in CONDITIONS:
        runs = [r[condition] for r in all_runs]
        print(
            f"{condition:>9}: spoke {np.mean([r.speech for r in runs]):.1f} s, "
            f"{np.mean([r.turns for r in runs]):.1f} turns, "
            f"{np.mean([r.after_first for r in runs]):.1f} s after the first turn "
            f"(mean of {len(runs)} runs)"
        )


if __name__ == "__main__":
    main()
