"""`antiphon serve` against a real mosquitto: sessions end to end, batching, fleets, bad input, ACL.

The node runs in-process (its torch thread next to the test's loop) except where a process must
die; clients are plain aiomqtt clients speaking the documented protocol (docs/protocol.md).
Outputs are compared with BatchEngine run alone on the same frames and seed: the oracle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import torch
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from app.core.engine import BatchEngine
from app.core.models import random_model
from app.core.recording import read_recording
from app.core.runtime import CollectingSink, PacedFileSource, RealClock
from app.serve.node import ServeError, ServeOptions, Server
from app.talk.remote import RemoteTalkSession
from app.wire.mqtt import BrokerSettings, make_client, socket_nodelay
from app.wire.protocol import (
    AudioFrame,
    SampleFormat,
    decode_audio,
    encode_audio,
    encode_json,
)
from model import SamplingParams
from tests.mosquitto import Mosquitto, running_broker

ROOT = Path(__file__).resolve().parents[3]
FRAME = 1920
WAIT = 10.0  # seconds: generous limit for anything awaited (the machine may be loaded)


@pytest.fixture(scope="module")
def model():
    return random_model(torch.device("cpu"), SamplingParams())


@pytest.fixture
def broker(tmp_path: Path):
    with running_broker(tmp_path) as running:
        yield running


def _audio(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.2 * rng.standard_normal((frames, FRAME)), -1, 1).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def oracle_thread():
    """The oracle's torch work runs in a thread that outlives the nodes' torch threads.

    Seen with torch 2.13's OpenMP build: once a thread that ran torch ops has exited, torch
    ops in the main thread run ~100x slower for about a second; a long-lived thread is not hit.
    """
    global _oracle
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle") as _oracle:
        yield


_oracle: ThreadPoolExecutor


def _alone(model, audio: np.ndarray, seed: int) -> list:
    """The oracle: the same frames and seed in a BatchEngine of its own."""

    def run() -> list:
        engine = BatchEngine(model, slots=4)
        slot = engine.open(SamplingParams(seed=seed))
        return [engine.step({slot: frame})[slot] for frame in audio]

    return _oracle.submit(run).result()


class Peer:
    """A test client: every message it receives is kept; `wait` for one that matches."""

    def __init__(self, client: aiomqtt.Client, owner: str) -> None:
        self.client = client
        self.owner = owner
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def collect(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._arrived.set()

    def on(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic.value == topic]  # type: ignore[misc]

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(payload) for payload in self.on(topic)]

    async def wait(
        self, topic: str, match: Callable[[bytes], bool] = lambda _: True, timeout: float = WAIT
    ) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                for payload in self.on(topic):
                    if match(payload):
                        return payload
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_event(self, topic: str, **fields: Any) -> dict[str, Any]:
        def matches(payload: bytes) -> bool:
            event = json.loads(payload)
            return all(event.get(k) == v for k, v in fields.items())

        return json.loads(await self.wait(topic, matches))

    async def request(
        self, target: str = "antiphon/requests", timeout: float = WAIT, **body: Any
    ) -> dict[str, Any] | None:
        """A session request with an MQTT 5 response topic; the node's answer (None: none)."""
        reply_to = f"antiphon/reply/{self.owner}/{secrets.token_hex(4)}"
        await self.client.subscribe(reply_to, qos=1)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply_to
        properties.CorrelationData = b"c-" + reply_to.encode()
        body = {"owner": self.owner, "format": "f32"} | body
        await self.client.publish(target, encode_json(body), qos=1, properties=properties)
        try:
            return json.loads(await self.wait(reply_to, timeout=timeout))
        except TimeoutError:
            return None

    async def open(self, **body: Any) -> dict[str, Any]:
        grant = await self.request(**body)
        assert grant is not None and grant["ok"], grant
        return grant

    async def send(self, grant: dict[str, Any], sequence: int, pcm: np.ndarray) -> None:
        frame = AudioFrame(sequence, pcm, SampleFormat.F32)
        await self.client.publish(grant["topic"] + "/in/audio", encode_audio(frame))

    def replies(self, grant: dict[str, Any]) -> list[AudioFrame]:
        return [decode_audio(p, FRAME) for p in self.on(grant["topic"] + "/out/audio")]

    async def wait_replies(self, grant: dict[str, Any], count: int) -> list[AudioFrame]:
        topic = grant["topic"] + "/out/audio"
        async with asyncio.timeout(WAIT):
            while len(self.on(topic)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.replies(grant)


def _settings(broker: Mosquitto, username: str | None, password: str) -> BrokerSettings:
    tls = broker.ca is not None
    return BrokerSettings(
        broker.host, broker.port, username=username, password=password, tls=tls, tls_ca=broker.ca
    )


@contextlib.asynccontextmanager
async def peer(
    broker: Mosquitto, owner: str = "alice", username: str | None = None, password: str = ""
) -> AsyncIterator[Peer]:
    settings = _settings(broker, username, password)
    async with make_client(settings, client_id=owner) as client:
        connected = Peer(client, owner)
        await client.subscribe(f"antiphon/+/session/{owner}/+/out/#", qos=0)  # all my sessions'
        collecting = asyncio.create_task(connected.collect())
        try:
            yield connected
        finally:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting


@contextlib.asynccontextmanager
async def serving(
    model, broker: Mosquitto, username: str | None = None, password: str = "", **options: Any
) -> AsyncIterator[Server]:
    settings = _settings(broker, username, password)
    defaults: dict[str, Any] = {"node": "n1", "slots": 4}
    server = Server(model, settings, ServeOptions(**(defaults | options)))
    task = asyncio.create_task(server.run())
    try:
        async with peer(broker, f"watch-{secrets.token_hex(3)}", username, password) as watcher:
            await watcher.client.subscribe(server.topics.status)
            await watcher.wait(server.topics.status, lambda p: p == b"online")
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- sessions end to end ------------------------------------------------------------------------


def test_open_talk_reset_close(model, broker: Mosquitto, tmp_path: Path) -> None:
    audio = _audio(1, 12)

    async def main() -> tuple[list[AudioFrame], dict[str, Any], Peer]:
        async with serving(model, broker, record=tmp_path / "rec") as server, peer(broker) as me:
            await me.client.subscribe("antiphon/n1/info", qos=1)
            grant = await me.open(sampling={"seed": 3})
            assert server.client is not None and socket_nodelay(server.client)
            assert socket_nodelay(me.client)
            events = grant["topic"] + "/out/event"
            await me.wait_event(events, state="opened")
            await me.wait("antiphon/n1/info", lambda p: json.loads(p)["free_slots"] == 3)
            for i in range(6):  # lock step: the next frame once the last is answered
                await me.send(grant, i, audio[i])
                await me.wait_replies(grant, i + 1)
            await me.client.publish(grant["topic"] + "/ctl", b'{"cmd": "reset"}', qos=1)
            await me.wait_event(events, state="reset")
            for i in range(6, 12):
                await me.send(grant, i, audio[i])
                await me.wait_replies(grant, i + 1)
            await me.client.publish(grant["topic"] + "/ctl", b'{"cmd": "close"}', qos=1)
            await me.wait_event(events, state="closed", detail="closed by the client")
            await me.wait("antiphon/n1/info", lambda p: json.loads(p)["free_slots"] == 4)
            return me.replies(grant), grant, me

    replies, grant, me = asyncio.run(main())
    assert [r.sequence for r in replies] == list(range(12))
    assert all(r.node_us > 0 and r.lm_us > 0 for r in replies)
    expected = _alone(model, audio[:6], 3) + _alone(model, audio[6:], 3)  # reset: a fresh start
    for reply, oracle in zip(replies, expected, strict=True):
        np.testing.assert_array_equal(reply.pcm, oracle.pcm)
    texts = [json.loads(p) for p in me.on(grant["topic"] + "/out/text")]
    assert [t["token"] for t in texts] == [o.text_token for o in expected if o.text]
    recorded = read_recording(tmp_path / "rec" / grant["session"])
    assert len(recorded.user) == 12 * FRAME and recorded.meta["summary"]["frames"] == 12
    assert recorded.meta["session"] == {"id": grant["session"], "owner": "alice"}


def test_a_recording_keeps_the_conversations_time(model, broker: Mosquitto, tmp_path: Path) -> None:
    """Frames that never reach the node (lost on the way) are silence in its recording, on the
    client's clock (its sequence numbers from its first one, whatever that is)."""
    audio = _audio(4, 8)
    sent = [0, 1, 2, 6, 7]  # 3, 4 and 5 never arrive

    async def main() -> dict[str, Any]:
        async with serving(model, broker, record=tmp_path / "rec") as server, peer(broker) as me:
            grant = await me.open()
            for count, i in enumerate(sent, start=1):
                await me.send(grant, 500 + i, audio[i])
                await me.wait_replies(grant, count)
            session = server.sessions[("alice", grant["session"])]
            assert (session.frames, session.position, session.missing) == (5, 8, 3)
            await me.client.publish(grant["topic"] + "/ctl", b'{"cmd": "close"}', qos=1)
            await me.wait_event(grant["topic"] + "/out/event", state="closed")
            return grant

    grant = asyncio.run(main())
    recorded = read_recording(tmp_path / "rec" / grant["session"])
    assert len(recorded.user) == 8 * FRAME and recorded.meta["silent_frames"] == 3
    user = recorded.user.reshape(8, FRAME)
    assert not user[3:6].any(), "the frames that never came are silence"
    for i in sent:  # the others where they were sent (PCM 16 in the file)
        np.testing.assert_allclose(user[i], audio[i], atol=1 / 32768)
    assert recorded.meta["summary"]["frames"] == 5  # stepped
    silence = [e for e in recorded.events if e.get("state") == "silence"]
    assert [e["frame"] for e in silence] == [3]
    assert all(e["frame"] <= 8 for e in recorded.events)
    assert [e["frame"] for e in recorded.events if e["type"] == "state"][-1] == 8  # closed


def test_a_failed_recording_ends_only_that_recording(
    model, broker: Mosquitto, tmp_path: Path
) -> None:
    audio = _audio(2, 6)

    async def main() -> tuple[dict[str, Any], int, int]:
        async with serving(model, broker, record=tmp_path / "rec") as server, peer(broker) as me:
            a, b = await me.open(sampling={"seed": 1}), await me.open(sampling={"seed": 2})
            for i in range(3):
                await me.send(a, i, audio[i])
                await me.send(b, i, audio[i])
                await me.wait_replies(a, i + 1)
                await me.wait_replies(b, i + 1)
            # The disk "fills up" under session a: its recorder refuses further frames.
            recorder = server.sessions[("alice", a["session"])].recorder
            assert recorder is not None
            recorder.close()
            for i in range(3, 6):
                await me.send(a, i, audio[i])
                await me.send(b, i, audio[i])
                await me.wait_replies(a, i + 1)
                await me.wait_replies(b, i + 1)
            # code "": the recording's own error (a busy machine may add `node_behind` ones)
            error = await me.wait_event(a["topic"] + "/out/event", type="error", code="")
            return error, len(me.replies(a)), len(me.replies(b))

    error, replies_a, replies_b = asyncio.run(main())
    assert error["message"].startswith("recording stopped") and not error["fatal"]
    assert replies_a == replies_b == 6  # both conversations went on


def test_four_sessions_each_equal_to_itself_alone(model, broker: Mosquitto) -> None:
    """Different audio and seeds, different phases and one pause: batches of every shape."""
    frames = 12
    audio = [_audio(10 + i, frames) for i in range(4)]

    async def talk(me: Peer, grant: dict[str, Any], index: int) -> None:
        await asyncio.sleep(0.02 * index)  # each client on its own phase
        for i in range(frames):
            await me.send(grant, i, audio[index][i])
            pause = 0.3 if (index == 2 and i == 5) else 0.0  # session 2 skips a few steps
            await asyncio.sleep(0.08 + pause)

    async def main() -> list[list[AudioFrame]]:
        async with serving(model, broker), peer(broker) as me:
            grants = [await me.open(sampling={"seed": 20 + i}) for i in range(4)]
            async with asyncio.TaskGroup() as tasks:
                for index, grant in enumerate(grants):
                    tasks.create_task(talk(me, grant, index))
            return [await me.wait_replies(grant, frames) for grant in grants]

    outputs = asyncio.run(main())
    for index, replies in enumerate(outputs):
        assert [r.sequence for r in replies] == list(range(frames))
        alone = _alone(model, audio[index], 20 + index)
        for reply, oracle in zip(replies, alone, strict=True):
            np.testing.assert_array_equal(reply.pcm, oracle.pcm)


def test_silent_client_times_out_and_frees_its_slot(model, broker: Mosquitto) -> None:
    async def main() -> None:
        async with serving(model, broker, slots=1, session_timeout=0.4), peer(broker) as me:
            grant = await me.open()
            await me.send(grant, 0, np.zeros(FRAME, np.float32))
            closed = await me.wait_event(grant["topic"] + "/out/event", state="closed")
            assert closed["detail"].startswith("timeout")
            assert await me.open()  # the slot is free again

    asyncio.run(main())


def test_a_freed_slot_takes_requests_before_its_client_hears_closed(
    model, broker: Mosquitto
) -> None:
    """A full node rejoins the fleet's group before it publishes `closed`: a request sent the
    moment `closed` arrives finds it. Rejoining is slowed down here, as on a loaded machine;
    when `closed` went out first, the request found no node."""

    async def main() -> None:
        async with serving(model, broker, slots=1) as server, peer(broker) as me:
            rejoin = server._update_availability

            async def slow_rejoin(client: aiomqtt.Client) -> None:
                await asyncio.sleep(0.5)
                await rejoin(client)

            server._update_availability = slow_rejoin  # type: ignore[method-assign]
            grant = await me.open()
            close = encode_json({"cmd": "close"})
            await me.client.publish(grant["topic"] + "/ctl", close, qos=1)
            await me.wait_event(grant["topic"] + "/out/event", state="closed")
            answer = await me.request(timeout=3.0)
            assert answer is not None and answer["ok"], answer

    asyncio.run(main())


def test_remote_talk_session_reports_the_network_share(
    model, broker: Mosquitto, tmp_path: Path
) -> None:
    audio = _audio(3, 10).reshape(-1)

    async def main() -> RemoteTalkSession:
        async with serving(model, broker):
            clock = RealClock()
            session = RemoteTalkSession(
                BrokerSettings(broker.host, broker.port),
                node="n1",
                sampling=SamplingParams(seed=4),
                record=tmp_path / "here",
                source=PacedFileSource(audio, FRAME, 24000, clock),
                sink=CollectingSink(),
                notices=lambda text: None,
            )
            await session.run()
            return session

    session = asyncio.run(main())
    report = session.latency_report()
    assert report["frames"] == 10 and report["dropped_input"] == 0
    assert 0 < report["network_ms"]["median"] < report["latency_ms"]["median"]
    assert 0 < report["network_share"] < 1 and report["node_ms"]["median"] > 0
    assert session.model_name.endswith("on n1")
    recorded = read_recording(tmp_path / "here")
    assert len(recorded.assistant) == 10 * FRAME
    np.testing.assert_allclose(recorded.user, audio, atol=1 / 32768)
    # s16 both ways: the node hears the quantised audio, and its answer is quantised again
    heard = np.clip(np.round(audio * 32768), -32768, 32767).reshape(10, FRAME) / 32768
    expected = np.concatenate([r.pcm for r in _alone(model, heard.astype(np.float32), 4)])
    np.testing.assert_allclose(recorded.assistant, expected, atol=1 / 32768)


# --- availability and fleets --------------------------------------------------------------------


def test_sigkill_sends_the_last_will_and_a_restart_serves_again(broker: Mosquitto) -> None:
    command = [sys.executable, "-m", "app.cli", "serve", "--broker", broker.url, "--node", "doomed"]
    command += ["--slots", "1", "--keepalive", "5"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)

    async def main() -> None:
        async with peer(broker) as me:
            await me.client.subscribe("antiphon/doomed/status", qos=1)
            process = start()
            try:
                await me.wait("antiphon/doomed/status", lambda p: p == b"online", timeout=60)
                process.send_signal(signal.SIGKILL)
                process.wait()
                me.messages.clear()
                await me.wait("antiphon/doomed/status", lambda p: p == b"offline")
            finally:
                process.kill()
                process.wait()
            me.messages.clear()
            process = start()
            try:
                await me.wait("antiphon/doomed/status", lambda p: p == b"online", timeout=60)
                grant = await me.request("antiphon/doomed/requests")
                assert grant is not None and grant["ok"] and grant["node"] == "doomed"
                process.send_signal(signal.SIGTERM)  # a clean exit says offline itself
                me.messages.clear()
                await me.wait("antiphon/doomed/status", lambda p: p == b"offline")
                assert process.wait(timeout=WAIT) == 0
            finally:
                process.kill()
                process.wait()

    asyncio.run(main())


def test_shared_subscription_gives_each_request_to_one_node(model, broker: Mosquitto) -> None:
    async def main() -> None:
        async with (
            serving(model, broker, node="n1", slots=2),
            serving(model, broker, node="n2", slots=2),
            peer(broker) as me,
        ):
            answers = [await me.request() for _ in range(4)]
            await asyncio.sleep(0.3)  # a second answer to any request would be in by now
            replies = [m for m in me.messages if m.topic.value.startswith("antiphon/reply/")]
            assert len(replies) == 4 and all(a is not None and a["ok"] for a in answers)
            nodes = sorted(a["node"] for a in answers if a is not None)
            assert nodes == ["n1", "n1", "n2", "n2"]
            assert await me.request(timeout=1.0) is None  # both full: neither takes requests
            first = answers[0]
            assert first is not None
            await me.client.subscribe(f"antiphon/{first['node']}/info", qos=1)
            await me.client.publish(first["topic"] + "/ctl", b'{"cmd":"close"}', qos=1)
            # The node rejoins the group before it says it has a free slot
            await me.wait(f"antiphon/{first['node']}/info", lambda p: b'"free_slots":1' in p)
            again = await me.request()
            assert again is not None and again["ok"] and again["node"] == first["node"]

    asyncio.run(main())


def test_the_node_reconnects_when_the_broker_comes_back(model, broker: Mosquitto) -> None:
    async def main() -> None:
        async with serving(model, broker) as server:
            broker.stop()
            await asyncio.sleep(0.3)
            broker.start()
            async with peer(broker) as me:
                await me.client.subscribe(server.topics.status, qos=1)
                await me.wait(server.topics.status, lambda p: p == b"online")
                grant = await me.open()
                await me.send(grant, 0, np.zeros(FRAME, np.float32))
                await me.wait_replies(grant, 1)
            assert server.metrics.reconnects >= 1

    asyncio.run(main())


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_gets_error_events_and_harms_no_one(model, broker: Mosquitto) -> None:
    frames = 10
    audio = _audio(5, frames)

    async def victim(me: Peer, grant: dict[str, Any]) -> list[AudioFrame]:
        for i in range(frames):
            await me.send(grant, i, audio[i])
            await asyncio.sleep(0.08)
        return await me.wait_replies(grant, frames)

    async def attack(me: Peer, server: Server) -> None:
        async def counted(code: str, count: int) -> None:  # repeated codes: events are limited
            async with asyncio.timeout(WAIT):
                while server.metrics.errors[code] < count:
                    await asyncio.sleep(0.01)

        grant = await me.open()
        topic, ctl, events = grant["topic"], grant["topic"] + "/ctl", grant["topic"] + "/out/event"
        silence = np.zeros(FRAME, np.float32)

        async def expect(code: str, *, on: str = events) -> None:
            await me.wait_event(on, code=code)

        await me.client.publish(ctl, b"{not json")
        await expect("bad_json")
        await me.client.publish(ctl, b'{"cmd": "dance"}')
        await expect("unknown_command")
        await me.client.publish(ctl, b'{"cmd": "sampling", "text_top_k": -3}')
        await expect("bad_sampling")
        await me.client.publish(ctl, b"[" * 3000 + b"]" * 3000)
        await expect("too_large")
        await me.client.publish(ctl, b"[" * 2000 + b"]" * 2000)  # deep, not large
        await counted("bad_json", 2)
        await me.client.publish(topic + "/in/audio", b"AP\x01\x01" + bytes(40))
        await expect("bad_frame")
        await me.client.publish(topic + "/in/audio", bytes(60_000))
        await counted("too_large", 2)
        await me.send(grant, 5, silence)
        await me.send(grant, 5, silence)
        await expect("duplicate")
        await me.send(grant, 3, silence)
        await expect("out_of_order")
        for i in range(6, 40):  # far faster than real time
            await me.send(grant, i, silence)
        await expect("input_overflow")
        ghost = f"antiphon/n1/session/{me.owner}/{secrets.token_urlsafe(16)}"
        await me.client.subscribe(ghost + "/out/event")
        await me.client.publish(ghost + "/ctl", b'{"cmd": "close"}')
        await expect("unknown_session", on=ghost + "/out/event")
        await me.client.publish(ctl, b'{"cmd": "close"}')
        await me.wait_event(events, state="closed")
        await me.send(grant, 100, silence)
        await expect("session_closed")
        await me.client.subscribe("antiphon/n1/errors")
        await me.client.publish("antiphon/requests", b'{"owner": "a/b"}')
        await me.wait_event("antiphon/n1/errors", code="bad_request")
        await me.client.publish("antiphon/n1/requests", b"\xff\xfe")
        await counted("bad_json", 3)
        refused = await me.request(sampling={"audio_top_k": "many"})
        assert refused is not None and refused["code"] == "bad_sampling"
        bad_reply = await me.request(owner="someone-else", timeout=0.5)  # reply under alice's
        assert bad_reply is None
        await me.wait_event("antiphon/n1/errors", code="bad_reply_topic")

    async def main() -> tuple[list[AudioFrame], dict[str, Any]]:
        async with (
            serving(model, broker) as server,
            peer(broker) as me,
            peer(broker, "mallory") as bad,
        ):
            grant = await me.open(sampling={"seed": 9})
            async with asyncio.TaskGroup() as tasks:
                victims = tasks.create_task(victim(me, grant))
                tasks.create_task(attack(bad, server))
            assert await me.open()  # the node still opens sessions
            return victims.result(), server.metrics.as_dict()

    replies, metrics = asyncio.run(main())
    for reply, oracle in zip(replies, _alone(model, audio, 9), strict=True):
        np.testing.assert_array_equal(reply.pcm, oracle.pcm)
    errors = metrics["errors"]
    for code in ["bad_json", "unknown_command", "bad_sampling", "too_large", "bad_frame"]:
        assert errors[code] >= 1, code
    for code in ["duplicate", "out_of_order", "unknown_session", "session_closed"]:
        assert errors[code] >= 1, code
    assert errors["input_overflow"] >= 1 and metrics["frames_dropped"] >= 1
    assert "internal" not in errors


def test_retained_leftovers_are_ignored(model, broker: Mosquitto) -> None:
    """A request or frame left retained on the broker reaches a node when it subscribes."""

    async def main() -> None:
        async with peer(broker, "mallory") as me:
            await me.client.subscribe("antiphon/n1/errors")
            request = encode_json({"owner": "mallory", "reply_to": "antiphon/reply/mallory/x"})
            await me.client.publish("antiphon/n1/requests", request, qos=1, retain=True)
            async with serving(model, broker) as server:
                await me.wait_event("antiphon/n1/errors", code="retained")
                assert server.metrics.sessions_opened == 0

    asyncio.run(main())


# --- security -----------------------------------------------------------------------------------

ACL = """\
# the nodes: everything under the prefix
user node
topic readwrite antiphon/#

# every client (patterns apply to all users; %u is the username): ask for sessions, read node
# status, read replies and its own sessions' output, write its own sessions' input
pattern write antiphon/requests
pattern write antiphon/+/requests
pattern read antiphon/+/status
pattern read antiphon/+/info
pattern read antiphon/reply/%u/#
pattern read antiphon/+/session/%u/+/out/#
pattern write antiphon/+/session/%u/+/in/audio
pattern write antiphon/+/session/%u/+/ctl
"""


def test_acl_keeps_each_client_to_its_own_sessions(model, tmp_path: Path) -> None:
    users = {"node": "node-secret", "alice": "alice-secret", "bob": "bob-secret"}
    audio = _audio(7, 6)

    async def main() -> tuple[list[AudioFrame], Peer]:
        with running_broker(tmp_path, users=users, acl=ACL) as broker:
            async with (
                serving(model, broker, username="node", password="node-secret") as server,
                peer(broker, "alice", "alice", "alice-secret") as alice,
                peer(broker, "bob", "bob", "bob-secret") as bob,
            ):
                grant = await alice.open(sampling={"seed": 2})
                topic = grant["topic"]
                # mosquitto 2.0 grants these subscriptions and then delivers nothing the ACL
                # forbids: what counts is what bob receives (nothing of alice's, below)
                for stolen in [topic + "/out/#", "antiphon/#", "antiphon/reply/alice/#"]:
                    await bob.client.subscribe(stolen, qos=0)
                for i in range(6):
                    await alice.send(grant, i, audio[i])
                    await bob.client.publish(
                        topic + "/in/audio",
                        encode_audio(
                            AudioFrame(100 + i, np.ones(FRAME, np.float32), SampleFormat.F32)
                        ),
                    )
                    await bob.client.publish(topic + "/ctl", b'{"cmd": "close"}')
                    await alice.wait_replies(grant, i + 1)
                # bob claiming to be alice: the reply would go under alice's tree, not his
                assert await bob.request(owner="alice", timeout=0.5) is None
                assert not [m for m in bob.messages if "alice" in m.topic.value]
                assert bob.on("antiphon/n1/status") == [b"online"]  # what bob may read, he does
                assert server.metrics.errors["duplicate"] == 0
                assert server.sessions[("alice", grant["session"])].frames == 6
                return alice.replies(grant), bob

    replies, _ = asyncio.run(main())
    assert [r.sequence for r in replies] == list(range(6))
    for reply, oracle in zip(replies, _alone(model, audio, 2), strict=True):
        np.testing.assert_array_equal(reply.pcm, oracle.pcm)


def test_tls_to_the_broker(model, tmp_path: Path) -> None:
    async def main() -> None:
        with running_broker(tmp_path, tls=True) as broker:
            async with serving(model, broker), peer(broker) as me:
                grant = await me.open()
                await me.send(grant, 0, np.zeros(FRAME, np.float32))
                await me.wait_replies(grant, 1)

    asyncio.run(main())


def test_the_node_needs_the_right_password(model, tmp_path: Path) -> None:
    with running_broker(tmp_path, users={"node": "right"}) as broker:
        settings = BrokerSettings(broker.host, broker.port, username="node", password="wrong")
        server = Server(model, settings, ServeOptions(node="n1", slots=1))
        with pytest.raises(ServeError, match="refused"):
            asyncio.run(server.run())
