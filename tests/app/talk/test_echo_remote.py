"""Echo cancellation in `antiphon talk --remote`, on a real JACK echo loop, a real mosquitto and a
node (app.serve.node.Server, in-process): the remote terminal's devices (PortAudio on JACK),
canceller and recording, as `talk --remote` runs them by default.

The node's engine is a scripted far end, as in the local test (test_echo_jack.py): it says a
long espeak-ng text whatever it hears. The tiny random model is no stand-in: its reply is a
steady hum below 300 Hz (-15 dBFS every frame, measured), which the canceller's high-pass filter
takes away before there is any echo to cancel; and on this busy 2-core machine its steps take
140-250 ms, slower than the 80 ms frames, so the node would skip most of them. Everything else
is the node's own: its frame clock, queues, sessions and MQTT. The room
(tests/app/talk/echo_room.py) and the figures (tests/app/talk/echo_loop.py) are the local test's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.engine import BatchEngine, StepResult
from app.core.models import LoadedModel, random_model
from app.core.recording import read_recording
from app.talk.remote import RemoteTalkSession
from app.wire.mqtt import BrokerSettings
from model import SamplingParams
from tests.app.serve.test_serve import serving
from tests.app.talk.echo_loop import (
    FIRST_PATH,
    FarEndScript,
    check,
    far_end_speech,
    late_move_trace,
    measure,
    talk_in_the_room,
)
from tests.app.talk.echo_room import EchoRoom
from tests.jack_server import JackServer, make_jack_fixture
from tests.mosquitto import Mosquitto, running_broker

jack_server = make_jack_fixture()


@pytest.fixture
def broker(tmp_path: Path):
    with running_broker(tmp_path) as running:
        yield running


class ScriptedReplies(BatchEngine):
    """The node's engine with the far end's script in place of the model's frame path."""

    def __init__(self, model: LoadedModel, slots: int, script: FarEndScript) -> None:
        super().__init__(model, slots)
        self.script = script

    def reset(self, slot: int) -> None:  # also on open: a new session hears it from the start
        super().reset(slot)
        self.script.rewind()

    def step(self, frames: dict[int, np.ndarray]) -> dict[int, StepResult]:
        assert len(frames) <= 1, "one conversation says the script"
        return {
            slot: StepResult(self.script.step(pcm), -1, "", 0.0, 0.0, 0.0)
            for slot, pcm in frames.items()
        }


async def _converse(
    jack: JackServer, broker: Mosquitto, script: FarEndScript, folder: Path, echo_cancel: bool
) -> tuple[EchoRoom, RemoteTalkSession]:
    model = random_model(torch.device("cpu"), SamplingParams())
    async with serving(model, broker, slots=1) as server:
        engine = ScriptedReplies(model, 1, script)
        server.engine = engine  # no session yet: nothing steps
        session = RemoteTalkSession(
            BrokerSettings(broker.host, broker.port),
            node="n1",
            input_device="system",
            output_device="system",
            record=folder / "session",
            keep_microphone=True,
            echo_cancel=echo_cancel,
            notices=print,
        )
        with EchoRoom(jack, FIRST_PATH) as room:
            await talk_in_the_room(room, folder, session.run())
    return room, session


@pytest.mark.slow
def test_talk_remote_cancels_echo_on_a_real_jack_loop_and_the_user_survives(
    jack_server: JackServer, broker: Mosquitto, tmp_path: Path
) -> None:
    script = FarEndScript(far_end_speech(tmp_path))
    room, session = asyncio.run(_converse(jack_server, broker, script, tmp_path, True))
    assert session.failure is None

    # What the node heard is the recording's user channel (the microphone, echo removed).
    recording = read_recording(tmp_path / "session")
    if recording.meta["silent_frames"] == 0:  # every frame answered: the two line up
        heard = np.concatenate(script.heard)[: len(recording.user)]
        assert np.allclose(heard, recording.user[: len(heard)], atol=1 / 16384)
    figures = measure(tmp_path / "session", room)
    moves = session.echo.delay_moves if session.echo else None
    print(f"silent frames {recording.meta['silent_frames']}; {figures.report()}")
    print(f"delay moves (frame, s) {moves}")
    if session.echo is not None:
        print(f"placement jumps (played frame, samples) {session.echo.placement_jumps}")
        print(f"capture jumps (frame, samples) {session.echo.capture_jumps}")
        print(late_move_trace(figures, session.echo.lag_estimates))
    check(figures, estimate_held=False)
    assert session.devices["echo"] == "WebRTC AEC3"  # on by default
