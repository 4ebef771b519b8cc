"""Faults on the serving side: a node slower than real time, a client faster than real time,
malformed and oversized messages from many clients at once, a full fleet. Real mosquitto, the
node as a process of its own (`python -m app.cli serve`), clients speaking the protocol.

Each fault gets the suite's three checks (conftest.py): no traceback, a message that says what
happened and what to do, nothing lost (the other sessions get every reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from app.wire.client import Grant, RemoteError, request_session
from app.wire.mqtt import call, make_client
from app.wire.protocol import AudioFrame, SampleFormat, decode_audio, encode_audio
from tests.mosquitto import Mosquitto

from .conftest import (
    FRAME,
    ROOT,
    WAIT,
    Process,
    assert_no_traceback,
    retained,
    serve,
    settings,
    talk,
    wait_until,
)
from .recording_helpers import assert_whole

PERIOD = FRAME / 24000


class Caller:
    """A session of the node, held by a client of its own; what came back is kept."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.broker, self.name = broker, name
        self.replies: list[AudioFrame] = []
        self.events: list[dict[str, Any]] = []
        self.client: aiomqtt.Client | None = None
        self.grant: Grant | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> Any:
        async with make_client(settings(self.broker), client_id=self.name) as client:
            self.client = client
            self.grant = await request_session(client, "antiphon", self.name)
            await call(client.subscribe(self.grant.topics.out, qos=0))
            receiving = asyncio.create_task(self._receive(client, self.grant))
            try:
                yield self
            finally:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving

    async def _receive(self, client: aiomqtt.Client, grant: Grant) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            if message.topic.value == grant.topics.out_audio:
                self.replies.append(decode_audio(message.payload, FRAME))
            elif message.topic.value == grant.topics.out_event:
                self.events.append(json.loads(message.payload))

    async def talk(self, frames: int, period: float = PERIOD) -> None:
        """`frames` frames, one per `period` seconds (0: all at once); then the replies."""
        assert self.client is not None and self.grant is not None
        rng = np.random.default_rng(len(self.name))
        start = time.monotonic()
        for i in range(frames):
            await asyncio.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
            pcm = (0.1 * rng.standard_normal(FRAME)).astype(np.float32)
            frame = encode_audio(AudioFrame(i, pcm, SampleFormat.S16))
            await call(self.client.publish(self.grant.topics.in_audio, frame))

    async def answered(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.replies) < count:
                await asyncio.sleep(0.05)

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "error"]


def test_a_node_slower_than_real_time_says_it_is_behind(broker: Mosquitto, tmp_path: Path) -> None:
    """Its client sends in real time: it hears that the node is behind, not "send slower"; the
    node logs it and its metrics say it until no session is left. (When it keeps up again with
    sessions running, each hears that too: tests/app/serve/test_clock.py.)"""
    delay = tmp_path / "delay"
    delay.write_text("0.15")  # seconds a step: 80 ms frames cannot keep up
    node = serve(broker, tmp_path, command=(str(ROOT / "tests/faults/slow_node.py"), str(delay)))
    try:
        alice = talk(broker, tmp_path, "alice")
        wait_until(lambda: "slower than real time" in alice.errors(), what="the node behind")
        wait_until(lambda: retained(broker, "antiphon/n1/metrics")["behind"], what="metrics")
        assert alice.wait() == 0
        wait_until(lambda: not retained(broker, "antiphon/n1/metrics")["behind"], what="idle")
        metrics = retained(broker, "antiphon/n1/metrics")
    finally:
        assert node.stop() == 0
    told = alice.errors()
    assert_no_traceback(told)
    assert "the node n1 is slower than real time" in told and "you send in real time" in told
    assert "nothing to change on your side" in told
    assert "send one frame per" not in told  # the old message blamed the client
    assert metrics["fell_behind"] >= 1 and metrics["frames_dropped"] > 0
    logged = node.errors()
    assert_no_traceback(logged)
    assert "node n1 is slower than real time" in logged and "fewer --slots" in logged
    assert "no sessions left" in logged
    recording = assert_whole(tmp_path / "alice")
    codes = [e.get("code") for e in recording.events if e["type"] == "error"]
    assert "node_behind" in codes


def test_a_client_faster_than_real_time_is_told_and_harms_no_one(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # Frames may wait long (a busy test machine steps slowly): only a burst overflows the queue.
    node = serve(broker, tmp_path, "--queue-frames", "64")

    async def main() -> tuple[Caller, Caller]:
        async with (
            Caller(broker, "steady").session() as steady,
            Caller(broker, "hasty").session() as hasty,
        ):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(steady.talk(25))
                tasks.create_task(hasty.talk(200, period=0.0))
            await steady.answered(25)
            async with asyncio.timeout(WAIT):
                while not hasty.errors():
                    await asyncio.sleep(0.05)
            return steady, hasty

    try:
        steady, hasty = asyncio.run(main())
        metrics = retained(broker, "antiphon/n1/metrics")
    finally:
        assert node.stop() == 0
    assert_no_traceback(node.errors())
    overflow = hasty.errors()[0]
    assert overflow["code"] == "input_overflow"
    assert (
        "faster than real time" in overflow["message"]
        and "send one frame per 80 ms" in (overflow["message"])
    )
    assert [r.sequence for r in steady.replies] == list(range(25))
    assert not [e for e in steady.errors() if e["code"] == "input_overflow"]  # not to blame
    if [e for e in steady.errors() if e["code"] == "node_behind"]:  # a busy machine: true
        assert metrics["fell_behind"] >= 1


async def _attack(broker: Mosquitto, index: int, victims: list[str]) -> int:
    """One misbehaving client: garbage on every topic it can name; returns messages sent."""
    name = f"mallory-{index}"
    sent = 0
    ghost = f"antiphon/n1/session/{name}/{secrets.token_urlsafe(16)}"
    payloads: list[tuple[str, bytes]] = [
        ("antiphon/requests", b"{not json"),
        ("antiphon/requests", json.dumps({"owner": "a/b"}).encode()),
        ("antiphon/n1/requests", b"\xff\xfe" * 100),
        ("antiphon/n1/requests", b"[" * 3000 + b"]" * 3000),  # too large for JSON
        (ghost + "/ctl", b'{"cmd": "close"}'),
        (ghost + "/in/audio", b"AP\x01\x01" + bytes(40)),
        (ghost + "/in/audio", bytes(60_000)),  # oversized audio
    ]
    for victim in victims:  # the victims' own session topics (an open broker lets anyone try)
        payloads += [
            (victim + "/ctl", b'{"cmd": "dance"}'),
            (victim + "/ctl", b'{"cmd": "sampling", "text_top_k": -3}'),
            (victim + "/in/audio", bytes(60_000)),
            (victim + "/in/audio", b"AP\x01\x09" + bytes(3900)),
        ]
    async with make_client(settings(broker), client_id=name) as client:
        for _ in range(3):
            for topic, payload in payloads:
                await call(client.publish(topic, payload))
                sent += 1
            await asyncio.sleep(0.05)
    return sent


def test_malformed_and_oversized_messages_from_many_clients_harm_no_session(
    broker: Mosquitto, tmp_path: Path
) -> None:
    node = serve(broker, tmp_path, "--record", str(tmp_path / "node"), "--queue-frames", "64")

    async def main() -> tuple[list[Caller], int]:
        async with (
            Caller(broker, "alice").session() as alice,
            Caller(broker, "bob").session() as bob,
        ):
            assert alice.grant is not None and bob.grant is not None
            victims = [alice.grant.topics.base, bob.grant.topics.base]
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(alice.talk(25))
                tasks.create_task(bob.talk(25))
                attacks = [tasks.create_task(_attack(broker, i, victims)) for i in range(8)]
            await alice.answered(25)
            await bob.answered(25)
            async with Caller(broker, "carol").session():  # the node still opens sessions
                pass
            return [alice, bob], sum(a.result() for a in attacks)

    try:
        callers, sent = asyncio.run(main())
        metrics = retained(broker, "antiphon/n1/metrics")
    finally:
        assert node.stop() == 0
    assert_no_traceback(node.errors())
    assert sent > 100
    for caller in callers:
        assert [r.sequence for r in caller.replies] == list(range(25))  # none lost, in order
        # what others sent to its topics is refused, and said to the session
        assert {e["code"] for e in caller.errors()} <= {"unknown_command", "bad_sampling",
                                                        "too_large", "bad_frame", "out_of_order",
                                                        "duplicate", "node_behind"}  # fmt: skip
        if "node_behind" in {e["code"] for e in caller.errors()}:  # a busy machine: true
            assert metrics["fell_behind"] >= 1
    errors = metrics["errors"]
    for code in ("bad_json", "bad_request", "too_large", "bad_frame", "unknown_session"):
        assert errors.get(code, 0) >= 1, (code, errors)
    assert "internal" not in errors
    for folder in (tmp_path / "node").iterdir():
        assert_whole(folder)


def test_a_full_fleet_says_so_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    node = serve(broker, tmp_path, "--slots", "2", "--session-timeout", "60")

    async def third_client() -> tuple[str, float]:
        async with make_client(settings(broker), client_id="carol") as client:
            started = time.monotonic()
            with pytest.raises(RemoteError) as refused:
                await request_session(client, "antiphon", "carol")
            return str(refused.value), time.monotonic() - started

    async def main() -> tuple[str, float, Process]:
        async with Caller(broker, "alice").session(), Caller(broker, "bob").session():
            message, seconds = await third_client()
            carol = talk(broker, tmp_path, "carol")
            await asyncio.to_thread(carol.wait)
            return message, seconds, carol

    try:
        message, seconds, carol = asyncio.run(main())
    finally:
        assert node.stop() == 0
    assert "every node is full (n1: all 2 slots busy)" in message
    assert "try again when a conversation ends, or start another node" in message
    assert seconds < 2.0  # it was "no node answered" after three 3 s timeouts
    assert carol.popen.returncode == 2
    told = carol.errors()
    assert_no_traceback(told)
    assert "every node is full" in told and "no node answered" not in told
    # and with the node gone (it said `offline` as it stopped): that, at once too
    gone, seconds = asyncio.run(third_client())
    assert "no node is online (n1: offline)" in gone and seconds < 2.0
