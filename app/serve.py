"""`antiphon serve`: many conversations on one model, batched, over MQTT (docs/serve.md).

    broker ─► receive ─┬─ audio: decode, check, the session's queue (bounded: drop oldest, count)
                       └─ requests, commands ─► control queue ─► control task (open, close, ...)
    stepper: once per frame period, just after the last of the clients' phases
             (`serve_state.step_time`), one BatchEngine.step (in the torch thread) for the
             sessions that have a frame; the others are skipped. Replies carry the sequence
             number of the frame they answer.
    housekeeping: sessions silent for --session-timeout are closed; metrics go out once a second.

One asyncio loop and one torch thread, which owns the BatchEngine and the recordings' audio, so
opening, closing, resetting and stepping never overlap. When the broker goes away the node
reconnects with back-off and serves on: sessions survive an outage shorter than
--session-timeout if their clients come back; the others time out. Frames in flight are lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import secrets
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
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

from app.core.engine import BatchEngine, StepResult
from app.core.events import ErrorEvent, Event, StateEvent, TextEvent
from app.core.models import LoadedModel, add_model_arguments, load_from_args
from app.core.recording import Recorder, RecordingError, model_meta, versions
from app.core.runtime import DropOldestQueue
from app.wire.mqtt import BrokerSettings, add_broker_arguments, broker_from_args, call, make_client
from app.wire.protocol import (
    BUSY,
    FULL,
    PROTOCOL_VERSION,
    RETAINED,
    SESSION_CLOSED,
    UNKNOWN_SESSION,
    AudioFrame,
    ProtocolError,
    SampleFormat,
    SessionRequest,
    Topics,
    decode_audio,
    decode_json,
    encode_audio,
    encode_json,
    max_audio_bytes,
    parse_command,
    parse_request,
    parse_sampling,
    valid_level,
)
from model import SamplingParams
from model.errors import AntiphonError, ConfigError

from .serve_state import Arrival, Metrics, Session, step_time

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
        self._wake = asyncio.Event()  # a frame arrived
        self._control: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(CONTROL_QUEUE)
        self._outbox: DropOldestQueue[tuple[str, bytes, int, bool]] = DropOldestQueue(OUTBOX)
        self._availability = asyncio.Lock()
        self._taking_requests = False
        self._stopping = False
        self._connections = 0  # successful connections so far
        self._silence = np.zeros(self.engine.frame_size, dtype=np.float32)
        if options.record:
            model_meta(model)  # hashes the weight files once, up front (cached), not per session

    @property
    def free_slots(self) -> int:
        return self.options.slots - len(self.sessions)

    def _warm_up(self, frames: int = 3) -> None:
        """A few silent batched steps in every slot: the first steps are slow (allocations)."""
        slots = [self.engine.open() for _ in range(self.options.slots)]
        for _ in range(frames):
            self.engine.step(dict.fromkeys(slots, self._silence))
        for slot in slots:
            self.engine.close(slot)

    # --- connection ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Warm up, then serve until cancelled, reconnecting with back-off when the broker goes.

        The node says `online` only once its first (slow) steps are behind it.
        """
        delay = RECONNECT_MIN
        try:
            await self._in_torch(self._warm_up)
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
                log.warning(
                    "broker %s: %s; reconnecting in %.1f s", self.broker.describe(), failure, delay
                )
                self.metrics.reconnects += 1
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(2 * delay, RECONNECT_MAX)
        finally:
            left = list(self.sessions.values())
            for session in left:
                self._forget(session, "node stopping")
            await asyncio.shield(self._in_torch(self._close_in_torch, left))
            self._torch.shutdown(wait=True)

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
            tasks.create_task(self._stepper(client))
            tasks.create_task(self._publisher(client))
            tasks.create_task(self._housekeeping(client))

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean exit: no more requests, sessions told, `offline` retained."""
        self._stopping = True
        await self._update_availability(client)
        for session in list(self.sessions.values()):
            await self._close(session, "node stopping")
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
            self._session_error(session, session.overflow_error(pushed))
        self._wake.set()

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
            await self._close(session, "closed by the client")
        elif command.name == "mute":
            session.muted = command.muted
            self._emit(session, StateEvent(session.elapsed, session.frames, _muted(command.muted)))
        elif command.name == "reset":
            await self._in_torch(self.engine.reset, session.slot)
            self._emit(session, StateEvent(session.elapsed, session.frames, "reset"))
        elif command.name == "sampling":
            session.sampling = params
            await self._in_torch(self.engine.set_sampling, session.slot, params)
            detail = encode_json(dataclasses.asdict(params)).decode()
            self._emit(session, StateEvent(session.elapsed, session.frames, "sampling", detail))

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

        slot, recorder, problem = await self._in_torch(open_in_torch)
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
        self._emit(session, StateEvent(0.0, 0, "opened", self.model.name))
        if problem is not None:
            self._emit(session, ErrorEvent(0.0, 0, f"not recording: {problem}"))
        self._publish_info()
        log.info("session %s… of %s opened in slot %d", session_id[:6], request.owner, slot)
        return session

    async def _close(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        self._forget(session, reason)
        await asyncio.shield(self._in_torch(self._close_in_torch, [session]))
        if self.client is not None:
            await self._update_availability(self.client)
        self._publish_info()

    def _forget(self, session: Session, reason: str) -> None:
        """The loop's side of closing: no more frames or commands reach the session."""
        session.closed = True
        key = (session.owner, session.id)
        self.sessions.pop(key, None)
        self._closed[key] = None
        while len(self._closed) > FORGET_CLOSED:
            self._closed.popitem(last=False)
        self.metrics.sessions_closed += 1
        self._emit(session, StateEvent(session.elapsed, session.frames, "closed", reason))
        log.info("session %s… closed: %s", session.id[:6], reason)

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

    # --- the frame clock -----------------------------------------------------------------------

    async def _stepper(self, client: aiomqtt.Client) -> None:
        while True:
            ready = [s for s in self.sessions.values() if s.queue]
            now = time.monotonic()
            period = self.engine.frame_duration
            at = step_time(self.sessions.values(), ready, now, period) if ready else math.inf
            if now >= at or any(len(s.queue) > 1 for s in ready):  # due, or someone is behind
                await self._step(client, ready)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if at == math.inf else at - now)

    async def _step(self, client: aiomqtt.Client, ready: list[Session]) -> None:
        batch = [(session, session.queue.popleft()) for session in ready]
        frames = {s.slot: self._silence if s.muted else a.frame.pcm for s, a in batch}
        started = time.perf_counter()
        try:
            results, unrecorded = await self._in_torch(self._step_in_torch, batch, frames)
        except Exception as exc:  # a failed step (out of memory, say) ends its sessions only
            log.exception("a batched step failed")
            self.metrics.errors["step_failed"] += 1
            for session, _ in batch:
                self._emit(
                    session, ErrorEvent(session.elapsed, session.frames, str(exc), fatal=True)
                )
                await self._close(session, "the node failed to step it")
            return
        self.metrics.steps += 1
        self.metrics.step_ms.append(1000 * (time.perf_counter() - started))
        for session, _ in batch:  # a recording that failed ends, its conversation goes on
            if session.slot in unrecorded and session.recorder is not None:
                recorder, session.recorder = session.recorder, None
                self.metrics.errors["recording_failed"] += 1
                self._emit(
                    session,
                    ErrorEvent(
                        session.elapsed,
                        session.frames,
                        f"recording stopped: {unrecorded[session.slot]}",
                        hint="free disk space or check the --record folder; what was written "
                        "is kept",
                    ),
                )
                with contextlib.suppress(AntiphonError, OSError, RuntimeError):
                    recorder.close(session.summary(self.engine.frame_duration))
        now = time.monotonic()
        publishing = []
        for session, arrival in batch:
            result = results[session.slot]
            index = session.frames
            session.frames += 1
            session.timings.add(result.compute_ms, result.encode_ms, result.lm_ms, result.decode_ms)
            if session.closed:
                continue
            publishing.extend(self._reply(client, session, arrival, result, index, now))
        await asyncio.gather(*publishing)

    def _step_in_torch(
        self, batch: list[tuple[Session, Arrival]], frames: dict[int, np.ndarray]
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        """The batched step, then each session's recording; a recording that fails (a full
        disk) is reported by slot and does not fail the step for the others."""
        results = self.engine.step(frames)
        unrecorded: dict[int, str] = {}
        for session, _ in batch:
            if session.recorder is not None:
                try:
                    session.recorder.write_frame(results[session.slot].pcm, frames[session.slot])
                except (AntiphonError, OSError, RuntimeError) as exc:
                    unrecorded[session.slot] = str(exc)
        return results, unrecorded

    def _reply(
        self,
        client: aiomqtt.Client,
        session: Session,
        arrival: Arrival,
        result: StepResult,
        index: int,
        now: float,
    ) -> list[Any]:
        node_us = 1e6 * (now - arrival.time)
        session.timings.node_ms.append(node_us / 1000)
        reply = AudioFrame(
            arrival.frame.sequence,
            result.pcm,
            session.format,
            node_us=round(node_us),
            encode_us=round(1000 * result.encode_ms),
            lm_us=round(1000 * result.lm_ms),
            decode_us=round(1000 * result.decode_ms),
        )
        self.metrics.frames_out += 1
        publishing = [client.publish(session.topics.out_audio, encode_audio(reply))]
        if result.text:
            event = TextEvent(session.elapsed, index, result.text_token, result.text)
            publishing.append(client.publish(session.topics.out_text, event.to_json()))
            if session.recorder is not None:
                session.recorder.emit(event)
        return publishing

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
                    await self._close(session, "timeout: no audio or command")
            current = self.metrics.as_dict()
            counters = {k: v for k, v in current.items() if k != "uptime_s"}
            if counters != published and now - last_metrics >= 1.0:
                published, last_metrics = counters, now
                self._outbox.put((self.topics.metrics, encode_json(current), 1, True))

    def _emit(self, session: Session, event: Event, **extra: Any) -> None:
        payload = encode_json(event.to_dict() | extra)
        self._outbox.put((session.topics.out_event, payload, 0, False))
        if session.recorder is not None:
            session.recorder.emit(event)

    def _session_error(self, session: Session, exc: ProtocolError) -> None:
        self.metrics.errors[exc.code] += 1
        session.errors[exc.code] += 1
        if session.may_report(exc.code, time.monotonic()):
            event = ErrorEvent(session.elapsed, session.frames, str(exc))
            self._emit(session, event, code=exc.code, count=session.errors[exc.code])

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

    def _in_torch(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        """Run in the torch thread; submitted at once, so work asked for is done even if the
        caller is cancelled meanwhile (the thread finishes its queue before the node exits)."""
        return asyncio.get_running_loop().run_in_executor(self._torch, function, *args)


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _muted(muted: bool) -> str:
    return "muted" if muted else "unmuted"


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_broker_arguments(parser, "--broker", host_and_port=True)
    group = parser.add_argument_group("serving")
    group.add_argument("--prefix", default="antiphon", help="topic prefix (default antiphon)")
    group.add_argument("--node", default=socket.gethostname(), help="node name (default: host)")
    group.add_argument("--slots", type=int, default=4, help="conversations at once (default 4)")
    group.add_argument("--record", type=Path, metavar="DIR", help="record every session here")
    group.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        help="close a session after this many seconds without audio (default 10)",
    )
    group.add_argument(
        "--queue-frames",
        type=int,
        default=8,
        help="input frames a session may have waiting before the oldest is dropped (default 8)",
    )


def run(args: argparse.Namespace) -> int:
    broker = broker_from_args(args, "--broker")
    options = ServeOptions(
        prefix=args.prefix,
        node=args.node,
        slots=args.slots,
        record=args.record,
        session_timeout=args.session_timeout,
        queue_frames=args.queue_frames,
    )
    model = load_from_args(args)
    if model.tokenizer is None:
        print(
            "antiphon: no bundled model yet: serving a small RANDOMLY INITIALISED model "
            "(noise and meaningless tokens); --hf-repo loads Kyutai's models",
            file=sys.stderr,
        )
    try:
        server = Server(model, broker, options)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    print(
        f"antiphon serve: node {options.node}, {options.slots} slots of {model.name}, "
        f"broker {broker.describe()}, topics {server.topics.prefix}/{options.node}/...",
        file=sys.stderr,
        flush=True,
    )
    return asyncio.run(_serve_until_signalled(server))


async def _serve_until_signalled(server: Server) -> int:
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(server.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        if not serving.cancelled():
            raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.serve ...`, the same as `antiphon serve ...`."""
    parser = argparse.ArgumentParser(prog="antiphon serve", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except AntiphonError as exc:
        print(f"antiphon: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
