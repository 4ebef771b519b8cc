"""The fault suite's tools: a real broker, `antiphon serve` and `antiphon talk --remote` as
processes of their own, and the three checks every fault gets.

    node = serve(broker, tmp_path, "--session-timeout", "4")       # online when it returns
    me = talk(broker, tmp_path, "alice")                            # the demo voice, 6 s
    ...; broker.stop(); broker.start()                              # the fault
    assert me.wait() == 0; assert_no_traceback(me.errors())         # 1. no traceback
    assert "is back after" in me.errors()                           # 2. what happened, what to do
    assert_whole(tmp_path / "alice")                                # 3. nothing lost

The processes are the product's own entry points (`python -m app.cli ...`) on the random tiny
model, which needs no download; `talk` has no sound device here (nor in CI), so it speaks the
generated demo utterance (6 s, in real time) and writes the reply to a WAV.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.wire.mqtt import BrokerSettings, make_client
from tests.mosquitto import Mosquitto, running_broker

ROOT = Path(__file__).resolve().parents[2]
FRAME = 1920
WAIT = 60.0  # seconds: generous limit for a process to start or end (the machine may be busy)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    folder = tmp_path / "broker"
    folder.mkdir()
    with running_broker(folder) as running:
        yield running


def settings(broker: Mosquitto) -> BrokerSettings:
    return BrokerSettings(broker.host, broker.port)


class Process:
    """One of our commands in a process of its own; stdout and stderr kept in files."""

    def __init__(self, args: Sequence[str], folder: Path, name: str) -> None:
        self.name = name
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, env=env,
            )  # fmt: skip

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"{self.name} did not end in {timeout} s:\n{self.errors()}")

    def stop(self) -> int:
        """SIGTERM, as `kill` or a service manager would; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def serve(
    broker: Mosquitto,
    folder: Path,
    *options: str,
    node: str = "n1",
    command: Sequence[str] = ("-m", "app.cli"),
) -> Process:
    """`antiphon serve` on the tiny model, once it says `online`."""
    process = Process(
        [*command, "serve", "--broker", broker.url, "--node", node, *options],
        folder,
        f"serve-{node}",
    )
    try:
        asyncio.run(wait_for_status(broker, node, b"online", process))
    except BaseException:
        process.kill()
        raise
    return process


def talk(broker: Mosquitto, folder: Path, name: str, *options: str) -> Process:
    """`antiphon talk --remote` without a TUI, recording to folder/name."""
    return Process(
        ["-m", "app.cli", "talk", "--remote", broker.url, "--no-tui", "--client-id", name]
        + ["--demo-out", str(folder / f"{name}.wav"), "--record", str(folder / name), *options],
        folder,
        name,
    )


async def wait_for_status(
    broker: Mosquitto, node: str, status: bytes, process: Process | None = None
) -> None:
    async with make_client(settings(broker)) as client:
        await client.subscribe(f"antiphon/{node}/status", qos=1)
        async with asyncio.timeout(WAIT):
            async for message in client.messages:
                if message.payload == status:
                    return
                if process is not None and process.popen.poll() is not None:
                    pytest.fail(f"{process.name} ended at start:\n{process.errors()}")


def retained(broker: Mosquitto, topic: str) -> dict[str, Any]:
    """The retained JSON message on `topic` (a node's info or metrics)."""

    async def read() -> dict[str, Any]:
        async with make_client(settings(broker)) as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(5):
                message = await anext(client.messages)
        assert isinstance(message.payload, bytes)
        return dict(json.loads(message.payload))

    return asyncio.run(read())


def wait_until(condition: Any, timeout: float = WAIT, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_no_traceback(text: str) -> None:
    """Check 1: whatever happened, no traceback reached the person."""
    for mark in ("Traceback", "ExceptionGroup", "Exception Group"):
        assert mark not in text, text
