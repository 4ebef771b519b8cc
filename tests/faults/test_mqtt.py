"""Faults of the broker under a node and its remote terminals: killed and restarted, gone for
longer than a session lasts, never there. Real mosquitto, real `serve` and `talk` processes.

Each fault gets the suite's three checks (conftest.py): no traceback, a message that says what
happened and what to do, nothing lost (the conversations go on, recordings read back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.core.models import random_model
from app.core.runtime import CollectingSink, PacedFileSource, RealClock
from app.serve.node import ServeOptions, Server
from app.talk.remote import RemoteTalkSession
from app.talk.tui import TalkApp, make_app
from app.wire.client import request_session
from app.wire.mqtt import make_client
from model import SamplingParams
from tests.mosquitto import Mosquitto, free_port

from .conftest import (
    FRAME,
    WAIT,
    assert_no_traceback,
    retained,
    serve,
    settings,
    talk,
    wait_for_status,
    wait_until,
)
from .recording_helpers import assert_whole


def kill(broker: Mosquitto) -> None:
    """SIGKILL: no goodbye to anyone (stop() then only forgets the process)."""
    assert broker.process is not None
    broker.process.kill()
    broker.process.wait()
    broker.stop()


def conversing(folder: Path, sessions: int, frames: int = 10) -> None:
    """Until the node has recorded `frames` frames of each of `sessions` sessions."""

    def recorded() -> list[int]:
        wavs = list(folder.glob("*/session.wav")) if folder.is_dir() else []
        return [(wav.stat().st_size - 44) // (FRAME * 2 * 4) for wav in wavs]  # float32 stereo

    wait_until(
        lambda: len(counts := recorded()) >= sessions and min(counts) >= frames, what="frames"
    )


def test_a_broker_restart_under_a_node_and_two_remote_terminals(
    broker: Mosquitto, tmp_path: Path
) -> None:
    node_recordings = tmp_path / "node"
    node = serve(broker, tmp_path, "--slots", "2", "--session-timeout", "5", "--record",
                 str(node_recordings))  # fmt: skip
    try:
        alice, bob = talk(broker, tmp_path, "alice"), talk(broker, tmp_path, "bob")
        conversing(node_recordings, 2)
        kill(broker)
        time.sleep(1.0)
        broker.start()
        for terminal in (alice, bob):
            assert terminal.wait() == 0, terminal.errors()
            errors = terminal.errors()
            assert_no_traceback(errors)
            assert "lost the broker" in errors and "reconnecting" in errors
            assert "is back after" in errors and "the conversation goes on" in errors, errors
            recording = assert_whole(tmp_path / terminal.name)
            states = [e["state"] for e in recording.events if e["type"] == "state"]
            assert "reconnected" in states
            assert recording.meta["summary"]["dropped_input"] > 0  # the outage's frames
        # the same two sessions went on on the node (no new one), past the outage
        folders = sorted(node_recordings.iterdir())
        assert len(folders) == 2

        async def still_serving() -> None:
            await wait_for_status(broker, "n1", b"online")
            async with make_client(settings(broker), client_id="carol") as client:
                grant = await request_session(client, "antiphon", "carol")
                assert grant.node == "n1"

        asyncio.run(still_serving())
    finally:
        assert node.stop() == 0
    assert_no_traceback(node.errors())
    for folder in folders:
        recording = assert_whole(folder)
        assert recording.meta["summary"]["frames"] > 40  # of 75: most of the 6 s conversation
        assert recording.events[-1]["detail"] == "closed by the client"


def test_a_broker_away_longer_than_the_session_timeout_ends_the_conversation(
    broker: Mosquitto, tmp_path: Path
) -> None:
    node = serve(broker, tmp_path, "--session-timeout", "1.5", "--record", str(tmp_path / "node"))
    try:
        alice = talk(broker, tmp_path, "alice")
        conversing(tmp_path / "node", 1)
        broker.stop()
        started = time.monotonic()
        assert alice.wait() == 1
        assert time.monotonic() - started < 20  # 1.5 s and the time to stop: no hanging on
        broker.start()
        errors = alice.errors()
        assert_no_traceback(errors)
        final = [line for line in errors.splitlines() if "conversation is over" in line]
        assert len(final) == 1, errors
        assert "lost the broker" in final[0] and "start antiphon talk again" in final[0]
        assert "recording is kept" in final[0]
        assert_whole(tmp_path / "alice")
        # the node, back with the broker, closes the session it no longer hears
        wait_until(lambda: retained(broker, "antiphon/n1/info")["free_slots"] == 4)
    finally:
        assert node.stop() == 0
    assert_no_traceback(node.errors())
    (folder,) = (tmp_path / "node").iterdir()
    assert assert_whole(folder).events[-1]["detail"].startswith("timeout")


def test_a_terminal_that_never_reaches_the_broker_says_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there

    class Nowhere:
        url = f"mqtt://127.0.0.1:{port}"

    alice = talk(Nowhere, tmp_path, "alice")  # type: ignore[arg-type]
    assert alice.wait() == 2
    errors = alice.errors()
    assert_no_traceback(errors)
    assert f"cannot reach the broker at mqtt://127.0.0.1:{port}" in errors
    assert "lost" not in errors and "is it running" in errors
    assert not (tmp_path / "alice").exists()  # no conversation, so no recording


# --- the same in the TUI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Any:
    return random_model(torch.device("cpu"), SamplingParams())


@contextlib.asynccontextmanager
async def serving(model: Any, broker: Mosquitto, **options: Any) -> AsyncIterator[Server]:
    server = Server(model, settings(broker), ServeOptions(node="n1", **options))
    task = asyncio.create_task(server.run())
    try:
        await wait_for_status(broker, "n1", b"online")
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def remote_session(
    broker: Mosquitto, seconds: float, folder: Path, notices: Any
) -> RemoteTalkSession:
    rng = np.random.default_rng(1)
    audio = np.clip(0.1 * rng.standard_normal(int(seconds * 24000)), -1, 1).astype(np.float32)
    return RemoteTalkSession(
        settings(broker),
        node="n1",
        record=folder,
        source=PacedFileSource(audio, FRAME, 24000, RealClock()),
        sink=CollectingSink(),
        notices=notices,
    )


async def until(condition: Any, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(("outage", "timeout"), [(0.8, 8.0), (3.0, 1.5)])
def test_the_tui_rides_out_a_broker_restart_or_says_why_it_ended(
    model: Any,
    broker: Mosquitto,
    tmp_path: Path,
    outage: float,
    timeout: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A short outage: the conversation goes on, the alert says so. One longer than the node's
    session timeout: the app ends on one line (no full-screen traceback), recording kept."""
    apps: list[TalkApp] = []  # notices go to the app, as the CLI wires them
    session = remote_session(broker, 10.0, tmp_path / "rec", lambda text: apps[0].notice(text))
    app = make_app(session)
    apps.append(app)

    async def main() -> None:
        async with serving(model, broker, session_timeout=timeout), app.run_test() as pilot:
            await until(lambda: session.timings.frames >= 10, "frames")
            broker.stop()
            await asyncio.sleep(outage)
            broker.start()
            await until(lambda: app.state == "ended" or not app.is_running, "the end")
            await pilot.pause()
            if app.is_running:
                await pilot.press("q")

    asyncio.run(main())
    printed = " ".join(capsys.readouterr().err.split())  # as printed, less the wrapping
    assert_no_traceback(printed)
    notes = "\n".join(app.notes)
    if outage < timeout:
        assert app.return_code == 0, printed
        assert "is back after" in notes and "the conversation goes on" in notes
    else:
        assert app.return_code == 1, printed
        # the terminal gave up, or the node, back first, closed the session it no longer heard
        assert "the conversation is over" in printed
    assert_whole(tmp_path / "rec")


def test_a_node_with_sessions_is_back_soon_enough_for_them_to_survive(
    model: Any, broker: Mosquitto, tmp_path: Path
) -> None:
    """An outage of 4.3 s under a 6 s session timeout: the node's plain back-off (0.5 s,
    doubling, +-20 %) would try at 2.8-4.2 s and then 6-9 s, after the session's end; with a
    session open it tries every 0.6 s, and the conversation goes on."""
    notes: list[str] = []
    session = remote_session(broker, 12.0, tmp_path / "rec", notes.append)

    async def main() -> int:
        async with serving(model, broker, session_timeout=6.0) as server:
            talking = asyncio.create_task(session.run())
            await until(lambda: session.timings.frames >= 10, "frames")
            kill(broker)
            await asyncio.sleep(4.3)
            broker.start()
            await talking
            return server.metrics.timeouts

    assert asyncio.run(main()) == 0  # the node timed out no session
    said = "\n".join(notes)
    assert "is back after" in said and "the conversation goes on" in said, said
    recording = assert_whole(tmp_path / "rec")
    states = [e["state"] for e in recording.events if e["type"] == "state"]
    assert "reconnected" in states
    # 150 frames less the ~60 of the outage (lost, as the recording says) and its reconnection
    assert recording.meta["summary"]["frames"] > 60
