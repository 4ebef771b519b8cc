"""Microphone frames dropped before the conversation sees them keep their places: on a real JACK
server, the event loop stalls for a second (a busy machine; on the echo loop the remote session
lost a frame this way at its start), PortAudio's callbacks pile up more frames than the
microphone's queue holds, and the oldest go. They are counted (`dropped_input`) and the
recording has silence where they were: every frame after the stall sits where it was captured.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import numpy as np

from app.core.audio import AudioFormat
from app.core.engine import Engine
from app.core.events import EventFanout
from app.core.recording import Recorder, read_recording
from app.core.runtime import CollectingSink, Conversation
from app.talk.devices import MicrophoneSource
from audio_io.devices import find_device
from model import SamplingParams
from tests.app.talk.echo_loop import FRAME, RATE, FarEndScript, ScriptedFarEnd
from tests.jack_server import JackPeer, JackServer, make_jack_fixture

jack_server = make_jack_fixture()
STALL_AT, STALL = 10, 1.0  # the loop stalls once frame 10 has been stepped, for a second


async def _converse(peer: JackPeer, far_end: ScriptedFarEnd, folder: Path, noise: np.ndarray):
    events = EventFanout()
    source = MicrophoneSource(find_device("system", "input"), events)
    recorder = Recorder(folder, AudioFormat(RATE, FRAME), "far end", SamplingParams(), {})
    events.sinks.append(recorder)
    conversation = Conversation(
        cast(Engine, far_end), source, CollectingSink(), events, recorder=recorder
    )
    far_end.conversation = conversation
    task = asyncio.create_task(conversation.run())
    try:
        while not peer.client.get_all_connections("system:capture_1"):
            await asyncio.sleep(0.01)
        peer.connect_portaudio()
        peer.play(noise)
        while len(far_end.heard_at) <= STALL_AT:
            await asyncio.sleep(0.01)
        time.sleep(STALL)  # noqa: ASYNC251 - the stall itself: the loop runs nothing meanwhile
        while len(far_end.heard_at) <= STALL_AT + 10:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        try:
            timings = await task
        except asyncio.CancelledError:
            timings = conversation.timings
        recorder.close()
    return conversation.counters(), timings


def test_frames_the_microphone_drops_in_a_stall_keep_their_place(
    jack_server: JackServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(10 * RATE)).astype(np.float32)
    far_end = ScriptedFarEnd(FarEndScript(np.zeros(FRAME, np.float32)))
    with JackPeer(jack_server) as peer:
        counters, _ = asyncio.run(_converse(peer, far_end, tmp_path / "rec", noise))
    assert counters["dropped_input"] >= 5  # a second's frames, less the queues' 4 + 4
    heard_at = far_end.heard_at
    assert heard_at == sorted(set(heard_at)) and heard_at[-1] - heard_at[0] + 1 > len(heard_at)

    user = read_recording(tmp_path / "rec").user
    quantised = np.clip(np.round(noise * 32768), -32768, 32767) / 32768
    # Where the recording's first frame of noise is in what the peer played...
    first = next(i for i in heard_at if user[i * FRAME : (i + 1) * FRAME].any())
    where = np.flatnonzero(np.isclose(quantised, user[first * FRAME], atol=1e-6))
    offsets = [w - first * FRAME for w in where]
    offset = next(
        o
        for o in offsets
        if np.allclose(quantised[o + first * FRAME : o + (first + 1) * FRAME],
                       user[first * FRAME : (first + 1) * FRAME], atol=1 / 32768)
    )  # fmt: skip
    # ...and every frame heard after it, the stall's too, is at the same place.
    for index in heard_at:
        if index > first and (index + 1) * FRAME + offset <= len(quantised):
            at = index * FRAME
            recorded = user[at : at + FRAME]
            fed = quantised[at + offset : at + offset + FRAME]
            assert np.allclose(recorded, fed, atol=1 / 32768), f"frame {index} moved"
    for index in set(range(heard_at[-1])) - set(heard_at):
        assert not user[index * FRAME : (index + 1) * FRAME].any()
