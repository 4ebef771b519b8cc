"""The serving node: many conversations on one model, batched, over MQTT (docs/serve.md).

    broker ─► receive ─┬─ audio: decode, check, the session's queue (bounded: drop oldest, count)
                       └─ requests, commands ─► control queue ─► control task (open, close, ...)
    frame clock (app/serve/clock.py): once per frame period, one BatchEngine.step (in the torch
             thread) for the sessions that have a frame; the others are skipped.
    housekeeping: sessions silent for --session-timeout are closed; metrics go out once a second.

One asyncio loop and one torch thread, which owns the BatchEngine and the recordings' audio, so
opening, closing, resetting and stepping never overlap. When the broker goes away the node
reconnects with back-off and serves on: sessions survive an outage shorter than
--session-timeout if their clients come back; the others time out. Frames in flight are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import secrets
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from aiomqtt import Will
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from app.core.engine import COMPILE_NOTICE, BatchEngine
from app.core.events import ErrorEvent, Event, StateEvent
from app.core.models import LoadedModel
from app.core.recording import Recorder, RecordingError, model_meta, versions
from app.core.runtime import DropOldestQueue
from app.wire.mqtt import BrokerSettings, call, make_client
from app.wire.protocol import (
    BUSY,
    FULL,
    PROTOCOL_VERSION,
    RETAINED,
    SESSION_CLOSED,
    UNKNOWN_SESSION,
    ProtocolError,
    SampleFormat,
    SessionRequest,
    Topics,
    decode_audio,
    decode_json,
    encode_json,
    max_audio_bytes,
    parse_command,
    parse_request,
    parse_sampling,
    valid_level,
)
from model import SamplingParams
from model.errors import AntiphonError, ConfigError

from .clock import FrameClock
from .sessions import Metrics, Session

log = logging.getLogger(__name__)

CONTROL_QUEUE = 256  # requests and commands waiting; more are dropped (and counted)
OUTBOX = 4096  # events waiting to be published; more: the oldest goes
INCOMING = 10_000  # messages the MQTT client holds before the receive task takes them
FORGET_CLOSED = 4096  # closed session ids remembered, to say "closed" rather than "unknown"
RECONNECT_MIN, RECONNECT_MAX = 0.5, 30.0  # seconds, doubling, with +-20 % jitter


class ServeError(AntiphonError):
    """The node cannot serve (the broker refuses it, say)."""


@dataclass(frozen=True)
class ServeOptions:
    prefix: str = "antiphon"
    node: str = field(default_factory=socket.gethostname)
    slots: int = 4  # conversations in one batched step
    record: Path | None = None  # a recording per session in record/<session id>
    session_timeout: float = 10.0  # seconds without a valid frame or command: closed
    queue_frames: int = 8  # input frames a session may have waiting (640 ms): more, oldest dropped


class Server:
    def __init__(self, model: LoadedModel, broker: BrokerSettings, options: ServeOptions) -> None:
        if options.slots < 1 or options.queue_frames < 1 or options.session_timeout <= 0:
            raise ConfigError("--slots and --queue-frames must be >= 1, --session-timeout > 0")
        self.model = model
        self.broker = broker
        self.options = options
        self.topics = Topics(options.prefix, options.node)
        self.engine = BatchEngine(model, options.slots)
        self.metrics = Metrics()
        self.sessions: dict[tuple[str, str], Session] = {}  # (owner, id)
        self.client: aiomqtt.Client | None = None  # while connected
        self._closed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antiphon-torch")
        self._control: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(CONTROL_QUEUE)
        self._outbox: DropOldestQueue[tuple[str, bytes, int, bool]] = DropOldestQueue(OUTBOX)
        self._availability = asyncio.Lock()
        self._taking_requests = False
        self._stopping = False
        self._connections = 0  # successful connections so far
        self.frame_clock = FrameClock(self)
        if options.record:
            model_meta(model)  # hashes the weight files once, up front (cached), not per session

    @property
    def name(self) -> str:
        return self.topics.node

    @property
    def free_slots(self) -> int:
        return self.options.slots - len(self.sessions)

    def _warm_up(self, frames: int = 3) -> None:
        """A few silent batched steps in every slot: the first steps are slow (allocations;
        with --compile, the compile)."""
        if self.engine.model.compiled:
            log.info(COMPILE_NOTICE)
        slots = [self.engine.open() for _ in range(self.options.slots)]
        silence = np.zeros(self.engine.frame_size, dtype=np.float32)
        for _ in range(frames):
            self.engine.step(dict.fromkeys(slots, silence))
        for slot in slots:
            self.engine.close(slot)

    # --- connection ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Warm up, then serve until cancelled, reconnecting with back-off when the broker goes.

        The node says `online` only once its first (slow) steps are behind it.
        """
        delay = RECONNECT_MIN
        try:
            await self.in_torch(self._warm_up)
            while True:
                connections = self._connections
                failure: BaseException | None = None
                try:
                    await self._connection()
                except* aiomqtt.MqttError as group:
                    failure = _first_leaf(group)
                if self._stopping:  # cancelled, and then the disconnect failed: stop all the same
                    raise asyncio.CancelledError
                if isinstance(failure, MqttConnectError) and self._connections == 0:
                    raise ServeError(
                        f"the broker at {self.broker.describe()} refused the node: {failure} "
                        "(check --username and the password)"
                    ) from failure
                if self._connections > connections:  # it was up: start the back-off afresh
                    delay = RECONNECT_MIN
                # while sessions can still go on, often enough to be back before they time out;
                # the back-off goes on from where it was once they cannot
                hurry = self._sessions_waiting() and self._session_retry < delay
                wait = self._session_retry if hurry else delay
                log.warning(
                    "broker %s: %s; reconnecting in %.1f s", self.broker.describe(), failure, wait
                )
                self.metrics.reconnects += 1
                await asyncio.sleep(wait * random.uniform(0.8, 1.2))
                if not hurry:
                    delay = min(2 * delay, RECONNECT_MAX)
        finally:
            left = list(self.sessions.values())
            for session in left:
                self._publish(session, self._forget(session, "node stopping"))
            await asyncio.shield(self.in_torch(self._close_in_torch, left))
            self._torch.shutdown(wait=True)

    @property
    def _session_retry(self) -> float:
        """The longest wait between tries to reach the broker while sessions can still go on:
        a tenth of the session timeout, so that they survive an outage shorter than it (the
        back-off alone, 0.5 s doubling, tried at 2.8-4.2 s and then 6-9 s: an outage of 4.3 s
        lost the conversation of a node with a 6 s timeout in 2 of 3 runs)."""
        return self.options.session_timeout / 10

    def _sessions_waiting(self) -> bool:
        """Whether a session heard from within the session timeout is open: its client may
        come back with the broker. Sessions are timed out only while connected, so those older
        are as good as over and do not keep the node knocking every second for hours."""
        now = time.monotonic()
        timeout = self.options.session_timeout
        return any(now - session.last_heard < timeout for session in self.sessions.values())

    async def _connection(self) -> None:
        will = Will(self.topics.status, b"offline", qos=1, retain=True)
        client = make_client(self.broker, will=will, max_queued_incoming=INCOMING)
        # A step publishes up to two messages per session at once; aiomqtt warns above this.
        client.pending_calls_threshold = 2 * self.options.slots + 16
        async with client:
            self._connections += 1
            self.client = client
            self._taking_requests = False
            log.info("connected to %s as node %s", self.broker.describe(), self.topics.node)
            try:
                await self._serve(client)
            except asyncio.CancelledError:
                self._stopping = True
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(3):
                        await self._goodbye(client)
                raise
            finally:
                self.client = None

    async def _serve(self, client: aiomqtt.Client) -> None:
        audio_filter, ctl_filter = self.topics.session_filters
        await call(client.subscribe(audio_filter, qos=0))
        await call(client.subscribe(ctl_filter, qos=1))
        await call(client.subscribe(self.topics.node_requests, qos=1))
        await self._update_availability(client)
        await call(client.publish(self.topics.info, encode_json(self._info()), qos=1, retain=True))
        await call(client.publish(self.topics.status, b"online", qos=1, retain=True))
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive(client))
            tasks.create_task(self._control_loop(client))
            tasks.create_task(self.frame_clock.run(client))
            tasks.create_task(self._publisher(client))
            tasks.create_task(self._housekeeping(client))

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean exit: no more requests, sessions told, `offline` retained."""
        self._stopping = True
        await self._update_availability(client)
        for session in list(self.sessions.values()):
            await self.close_session(session, "node stopping")
        while self._outbox.qsize():
            topic, payload, qos, retain = await self._outbox.get()
            await call(client.publish(topic, payload, qos=qos, retain=retain))
        await call(client.publish(self.topics.info, encode_json(self._info()), qos=1, retain=True))
        await call(client.publish(self.topics.status, b"offline", qos=1, retain=True))

    # --- incoming ------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            parsed = self.topics.parse_session_topic(message.topic.value)
            if message.retain:  # left on the broker by someone: never a live request or frame
                self._node_error(ProtocolError(RETAINED, f"retained {message.topic} ignored"))
            elif parsed is not None and parsed[2] == "in/audio":
                self._on_audio(parsed[0], parsed[1], payload)
            elif self._control.full():
                self._node_error(ProtocolError(BUSY, "too many requests and commands waiting"))
            else:
                self._control.put_nowait(message)

    async def _control_loop(self, client: aiomqtt.Client) -> None:
        while True:
            message = await self._control.get()
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                if topic in (self.topics.fleet_requests, self.topics.node_requests):
                    await self._on_request(client, message, payload)
                elif (parsed := self.topics.parse_session_topic(topic)) is not None:
                    await self._on_command(client, parsed[0], parsed[1], payload)
            except aiomqtt.MqttError:
                raise
            except Exception:  # a bug must not let one message stop the node
                log.exception("failed to handle a message on %s", topic)
                self.metrics.errors["internal"] += 1

    def _on_audio(self, owner: str, session_id: str, payload: bytes) -> None:
        now = time.monotonic()
        session = self.sessions.get((owner, session_id))
        if session is None:
            self._no_such_session(owner, session_id)
            return
        try:
            frame = decode_audio(payload, self.engine.frame_size)
            pushed = session.accept(frame, now)
        except ProtocolError as exc:
            self._session_error(session, exc)
            return
        self.metrics.frames_in += 1
        if pushed:
            self.metrics.frames_dropped += pushed
            overflow = session.overflow_error(pushed, self.engine.frame_duration, self.topics.node)
            self._session_error(session, overflow)
        self.frame_clock.wake.set()

    async def _on_request(
        self, client: aiomqtt.Client, message: aiomqtt.Message, payload: bytes
    ) -> None:
        self.metrics.requests += 1
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None) if properties else None
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        try:
            request = parse_request(decode_json(payload))
            reply_to = self.topics.check_reply_topic(
                response_topic or request.reply_to or "", request.owner
            )
        except ProtocolError as exc:
            self._node_error(exc)
            return
        reply_properties = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            reply_properties.CorrelationData = correlation
        echo = {"correlation": request.correlation} if request.correlation is not None else {}
        try:
            sampling = parse_sampling(request.sampling, self.model.sampling)
            if self.free_slots == 0:
                raise ProtocolError(FULL, f"all {self.options.slots} slots of this node are busy")
        except ProtocolError as exc:
            self.metrics.errors[exc.code] += 1
            body: dict[str, Any] = {"ok": False, "code": exc.code, "message": str(exc)}
        else:
            session = await self._open(request, sampling)
            body = {
                "ok": True,
                "owner": session.owner,
                "session": session.id,
                "topic": session.topics.base,
                "model": self.model.name,
                "format": session.format.name.lower(),
                "sample_rate": self.engine.sample_rate,
                "frame_size": self.engine.frame_size,
                "session_timeout_s": self.options.session_timeout,
                "sampling": dataclasses.asdict(sampling),
            }
            # Leave the fleet's group first if now full: the next request then goes elsewhere.
            await self._update_availability(client)
        reply = encode_json({"node": self.topics.node, **body, **echo})
        await call(client.publish(reply_to, reply, qos=1, properties=reply_properties))

    async def _on_command(
        self, client: aiomqtt.Client, owner: str, session_id: str, payload: bytes
    ) -> None:
        session = self.sessions.get((owner, session_id))
        if session is None:
            self._no_such_session(owner, session_id)
            return
        try:
            command = parse_command(decode_json(payload))
            params = parse_sampling(command.sampling or {}, session.sampling)
        except ProtocolError as exc:
            self._session_error(session, exc)
            return
        session.last_heard = time.monotonic()
        if command.name == "close":
            await self.close_session(session, "closed by the client")
        elif command.name == "mute":
            session.muted = command.muted
            self.emit(session, StateEvent(session.elapsed, session.position, _muted(command.muted)))
        elif command.name == "reset":
            await self.in_torch(self.engine.reset, session.slot)
            self.emit(session, StateEvent(session.elapsed, session.position, "reset"))
        elif command.name == "sampling":
            session.sampling = params
            await self.in_torch(self.engine.set_sampling, session.slot, params)
            detail = encode_json(dataclasses.asdict(params)).decode()
            self.emit(session, StateEvent(session.elapsed, session.position, "sampling", detail))

    # --- sessions ------------------------------------------------------------------------------

    async def _open(self, request: SessionRequest, sampling: SamplingParams) -> Session:
        session_id = secrets.token_urlsafe(16)
        folder = self.options.record / session_id if self.options.record else None
        devices = {
            "input": f"mqtt client {request.owner}",
            "output": f"mqtt client {request.owner}",
        }
        devices["node"] = self.topics.node
        devices["inference"] = str(self.model.device)

        def open_in_torch() -> tuple[int, Recorder | None, str | None]:
            slot = self.engine.open(sampling)
            if folder is None:
                return slot, None, None
            try:
                recorder = Recorder(folder, self.engine.format, self.model, sampling, devices)
            except RecordingError as exc:
                return slot, None, str(exc)
            recorder.meta["session"] = {"id": session_id, "owner": request.owner}
            return slot, recorder, None

        slot, recorder, problem = await self.in_torch(open_in_torch)
        session = Session(
            id=session_id,
            owner=request.owner,
            slot=slot,
            topics=self.topics.session(request.owner, session_id),
            format=request.format,
            sampling=sampling,
            queue_frames=self.options.queue_frames,
            recorder=recorder,
        )
        self.sessions[(session.owner, session.id)] = session
        self.metrics.sessions_opened += 1
        self.emit(session, StateEvent(0.0, 0, "opened", self.model.name))
        if self.frame_clock.behind:
            self.emit(session, self.frame_clock.behind_event(session))
        if problem is not None:
            self.emit(session, ErrorEvent(0.0, 0, f"not recording: {problem}"))
        self._publish_info()
        log.info("session %s… of %s opened in slot %d", session_id[:6], request.owner, slot)
        return session

    async def close_session(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        closed = self._forget(session, reason)
        await asyncio.shield(self.in_torch(self._close_in_torch, [session]))
        if self.client is not None:
            # Back in the fleet's group before the client hears that its slot is free: a
            # request it sends at once must find this node (it found none when `closed` went
            # out first).
            await self._update_availability(self.client)
        self._publish(session, closed)
        self._publish_info()

    def _forget(self, session: Session, reason: str) -> StateEvent:
        """The loop's side of closing: no more frames or commands reach the session. Returns
        the `closed` event, already in its recording, for the caller to publish."""
        session.closed = True
        key = (session.owner, session.id)
        self.sessions.pop(key, None)
        self._closed[key] = None
        while len(self._closed) > FORGET_CLOSED:
            self._closed.popitem(last=False)
        self.metrics.sessions_closed += 1
        closed = StateEvent(session.elapsed, session.position, "closed", reason)
        if session.recorder is not None:
            session.recorder.emit(closed)
        log.info("session %s… closed: %s", session.id[:6], reason)
        return closed

    def _close_in_torch(self, sessions: list[Session]) -> None:
        for session in sessions:
            self.engine.close(session.slot)
            if session.recorder is not None:
                session.recorder.close(session.summary(self.engine.frame_duration))

    async def _update_availability(self, client: aiomqtt.Client) -> None:
        """Take fleet requests only while a slot is free (a full node leaves the group)."""
        async with self._availability:
            wanted = self.free_slots > 0 and not self._stopping
            if wanted and not self._taking_requests:
                await call(client.subscribe(self.topics.shared_requests, qos=1))
            elif not wanted and self._taking_requests:
                await call(client.unsubscribe(self.topics.shared_requests))
            self._taking_requests = wanted

    # --- outgoing ------------------------------------------------------------------------------

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload, qos, retain = await self._outbox.get()
            await call(client.publish(topic, payload, qos=qos, retain=retain))

    async def _housekeeping(self, client: aiomqtt.Client) -> None:
        published: dict[str, Any] | None = None
        interval = min(0.25, self.options.session_timeout / 4)
        last_metrics = -math.inf
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_heard > self.options.session_timeout:
                    self.metrics.timeouts += 1
                    await self.close_session(session, "timeout: no audio or command")
            current = self.metrics.as_dict()
            counters = {k: v for k, v in current.items() if k != "uptime_s"}
            if counters != published and now - last_metrics >= 1.0:
                published, last_metrics = counters, now
                self._outbox.put((self.topics.metrics, encode_json(current), 1, True))

    def emit(self, session: Session, event: Event, **extra: Any) -> None:
        """An event of a session: to its client (event topic) and to its recording."""
        self._publish(session, event, **extra)
        if session.recorder is not None:
            session.recorder.emit(event)

    def _publish(self, session: Session, event: Event, **extra: Any) -> None:
        payload = encode_json(event.to_dict() | extra)
        self._outbox.put((session.topics.out_event, payload, 0, False))

    def _session_error(self, session: Session, exc: ProtocolError) -> None:
        self.metrics.errors[exc.code] += 1
        session.errors[exc.code] += 1
        if session.may_report(exc.code, time.monotonic()):
            event = ErrorEvent(session.elapsed, session.position, str(exc))
            self.emit(session, event, code=exc.code, count=session.errors[exc.code])

    def _no_such_session(self, owner: str, session_id: str) -> None:
        """Told on the named session's own event topic, which only its owner may read."""
        key = (owner, session_id)
        code = SESSION_CLOSED if key in self._closed else UNKNOWN_SESSION
        self.metrics.errors[code] += 1
        if not self.metrics.may_report(code, time.monotonic()):
            return
        message = "this session is closed" if code == SESSION_CLOSED else "no such session here"
        body = {**ErrorEvent(0.0, -1, message, "open a new session").to_dict(), "code": code}
        if valid_level(owner) and valid_level(session_id):
            topic = self.topics.session(owner, session_id).out_event
        else:
            topic = self.topics.errors
        self._outbox.put((topic, encode_json(body), 0, False))

    def _node_error(self, exc: ProtocolError) -> None:
        """About a message that names no session and no usable reply topic."""
        self.metrics.errors[exc.code] += 1
        if self.metrics.may_report(exc.code, time.monotonic()):
            body = {**ErrorEvent(0.0, -1, str(exc)).to_dict(), "code": exc.code}
            self._outbox.put((self.topics.errors, encode_json(body), 0, False))

    def _publish_info(self) -> None:
        self._outbox.put((self.topics.info, encode_json(self._info()), 1, True))

    def _info(self) -> dict[str, Any]:
        return {
            "node": self.topics.node,
            "protocol": PROTOCOL_VERSION,
            "version": versions()["antiphon"],
            "model": self.model.name,
            "slots": self.options.slots,
            "free_slots": 0 if self._stopping else self.free_slots,
            "sample_rate": self.engine.sample_rate,
            "frame_size": self.engine.frame_size,
            "formats": [f.name.lower() for f in SampleFormat],
            "max_audio_bytes": max_audio_bytes(self.engine.frame_size),
            "session_timeout_s": self.options.session_timeout,
            "requests": self.topics.node_requests,
            "fleet_requests": self.topics.fleet_requests,
        }

    def in_torch(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        """Run in the torch thread; submitted at once, so work asked for is done even if the
        caller is cancelled meanwhile (the thread finishes its queue before the node exits)."""
        return asyncio.get_running_loop().run_in_executor(self._torch, function, *args)


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _muted(muted: bool) -> str:
    return "muted" if muted else "unmuted"
