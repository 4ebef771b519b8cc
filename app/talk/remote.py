"""`antiphon talk --remote`: microphone and speaker here, the model on an `antiphon serve` node.

    microphone ─► send task ─► <session>/in/audio ─► node ─► <session>/out/audio ─► receive task
                  (sequence numbers,                          (the same numbers)     ─► speaker
                   capture and send times kept)

`RemoteTalkSession` has the control surface of `app.talk.session.TalkSession` (model_name, devices,
sampling, muted, reset, set_sampling, start/stop_recording, events, notice, run), so the
terminal printer and the TUI drive either. Each reply carries the node's time for its frame, so
the round trip splits into the node's share and the network's (both ways, broker included).

The conversation's frame clock is the sequence number: frame n is the n-th frame captured here,
answered or not. A recording keeps that time: frames the node never answered (it skipped them,
or they were lost on the way) are silence in it, and the node's events are put on the frame of
the reply they came with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from aiomqtt.exceptions import MqttConnectError

from app.core.audio import AudioFormat, level_db
from app.core.events import (
    ErrorEvent,
    Event,
    EventFanout,
    FrameStats,
    StateEvent,
    event_from_record,
)
from app.core.recording import WRITE_FAILED_HINT, Origin, Recorder, RecordingError
from app.core.runtime import (
    AudioSink,
    AudioSource,
    CapturedFrame,
    CollectingSink,
    RealClock,
)
from app.core.timing import COUNTERS, Timings
from app.wire.client import Grant, RemoteError, request_session
from app.wire.mqtt import (
    PASSWORD_ENV,
    BrokerSettings,
    add_broker_arguments,
    broker_from_args,
    call,
    make_client,
)
from app.wire.protocol import (
    SESSION_CLOSED,
    UNKNOWN_SESSION,
    AudioFrame,
    ProtocolError,
    SampleFormat,
    decode_audio,
    decode_json,
    encode_audio,
    encode_json,
)
from audio_io.echo import EchoCanceller
from audio_io.files import write_wav
from model import SamplingParams

from .devices import open_devices, open_echo_canceller

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 1.0  # seconds to wait for the last replies after the microphone ends
# Seconds the send loop waits for a frame's publish: aiomqtt's 10 s, for one sent into a dropped
# connection paho has not yet noticed, would hold every later frame past the session timeout.
PUBLISH_TIMEOUT = 1.0
# Seconds between tries to reach the broker, doubling: a terminal is one client, so it can try
# every second and be back within a second of the broker (the conversation is waiting).
RECONNECT_MIN, RECONNECT_MAX = 0.25, 1.0
BROKER_LOST = "broker_lost"  # the code of the error event when the connection goes


@dataclass(frozen=True)
class _Sent:
    capture_time: float
    send_time: float
    pcm: np.ndarray  # what went out (echo removed), for a recording
    microphone: np.ndarray  # the raw microphone frame
    erle_db: float | None  # the canceller's estimate for the frame


class RemoteTalkSession:
    """A conversation with a model on a node; the same controls as `TalkSession`."""

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        prefix: str = "antiphon",
        node: str | None = None,
        sampling: SamplingParams | None = None,
        input_device: str | None = None,
        output_device: str | None = None,
        record: Path | None = None,
        demo_out: Path = Path("antiphon-talk.wav"),
        notices: Callable[[str], None] | None = None,
        source: AudioSource | None = None,
        sink: AudioSink | None = None,
        echo_cancel: bool = True,
        keep_microphone: bool = False,
    ) -> None:
        self.broker = broker
        self.echo_cancel = echo_cancel  # remove the speaker's echo before sending
        self.keep_microphone = keep_microphone  # recordings keep the raw microphone too
        self.echo: EchoCanceller | None = None
        # With a login the broker's ACL puts the session under the username; on an open broker
        # the client id stands in for it.
        self.client_id = broker.client_id or f"antiphon-talk-{secrets.token_hex(4)}"
        self.owner = broker.username or self.client_id
        self.prefix = prefix
        self.node = node
        self.input_device = input_device
        self.output_device = output_device
        self.demo_out = demo_out
        self.clock = RealClock()
        self.events = EventFanout()
        self.devices: dict[str, str] = {}
        self.recorder: Recorder | None = None
        self.recording_started: float | None = None
        self.grant: Grant | None = None
        self.format = AudioFormat(24000, 1920)  # the node's, once it has answered
        # per frame: compute and latency, the node's time, the round trip minus the node's time
        self.timings = Timings()
        self._sampling = sampling or SamplingParams()
        self._sampling_asked = sampling is not None
        self._muted = False
        self.initial_record = record
        self._notices = notices or (lambda text: print(f"antiphon: {text}", file=sys.stderr))
        self._source, self._sink = source, sink
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sent: dict[int, _Sent] = {}
        self._sequence = 0
        self._lost = 0  # frames never answered: never sent (the broker away, dropped by the
        # microphone to keep up) or skipped by the node
        self._answered = -1  # the sequence number of the latest reply
        self._last_stats: FrameStats | None = None
        self._started = 0.0
        self._client: aiomqtt.Client | None = None  # the connection of the moment (None: away)
        self._last_sent = 0.0  # when a frame last went out: the node's session timeout counts
        self._heard = 0.0  # when the node was last heard from
        self.failure: str | None = None  # why the conversation ended early, if it did

    @property
    def model_name(self) -> str:
        if self.grant is None:
            return f"remote: {self.node or 'any node'} at {self.broker.describe()}"
        return f"{self.grant.model} on {self.grant.node}"

    @property
    def sampling(self) -> SamplingParams:
        return self._sampling

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = value  # the node feeds silence instead; its state event comes back
        self._commands.put_nowait({"cmd": "mute", "muted": value})

    def notice(self, text: str) -> None:
        self._notices(text)

    def reset(self) -> None:
        self._commands.put_nowait({"cmd": "reset"})

    def set_sampling(self, params: SamplingParams) -> None:
        self._sampling = params
        self._commands.put_nowait({"cmd": "sampling", **dataclasses.asdict(params)})

    def start_recording(self, folder: Path) -> None:
        recorder = Recorder(
            folder, self.format, self.model_name, self._sampling, self.devices,
            keep_microphone=self.keep_microphone,
        )  # fmt: skip
        if self._sequence > 0:  # mid-conversation: its own frame 0, time 0 and counters
            stats = self._last_stats
            counters = {n: getattr(stats, n) for n in COUNTERS} if stats else {}
            counters["dropped_input"] = self._lost
            recorder.start_at(Origin(self._elapsed(), self._sequence, counters))
        self.recorder, self.recording_started = recorder, self.clock.now()
        self.events.sinks.append(recorder)

    def stop_recording(self) -> Path | None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        # The frames before the oldest still awaited were answered or are lost for good: the
        # recording's time runs to there (to the last frame captured once the session is over).
        self.events.sinks.remove(recorder)
        self.recording_started = None
        try:
            try:
                recorder.pad_to(min(self._sent, default=self._sequence))
            finally:  # a full disk must not leave it unclosed
                recorder.update_counters(self.timings.counters)
                recorder.close(recorder.summary(node=self.grant.node if self.grant else None))
        except RecordingError as exc:  # said, and the conversation goes on
            self.notice(f"{exc} ({WRITE_FAILED_HINT})")
        return recorder.folder

    def latency_report(self) -> dict[str, Any]:
        """Where the time goes: the conversation's figures plus the network's share."""
        frame_duration = self.format.frame_duration
        return self.timings.summary(frame_duration, node=self.grant.node if self.grant else None)

    async def run(self) -> Timings:
        """Get a session, open the devices and converse until the source ends or cancellation.

        A broker that goes away is reached again (with back-off) while the node still keeps the
        session; frames captured meanwhile are lost, and counted."""
        async with contextlib.AsyncExitStack() as connections:
            try:
                client = await self._connect(connections)
            except MqttConnectError as exc:
                raise RemoteError(
                    f"the broker at {self.broker.describe()} refused the connection: {exc} "
                    f"(check --username and ${PASSWORD_ENV})"
                ) from exc
            except aiomqtt.MqttError as exc:
                raise RemoteError(
                    f"cannot reach the broker at {self.broker.describe()}: {exc} "
                    "(is it running, and is --remote right?)"
                ) from exc
            try:
                sampling = dataclasses.asdict(self._sampling) if self._sampling_asked else None
                self.grant = grant = await request_session(
                    client, self.prefix, self.owner, node=self.node, sampling=sampling
                )
                await call(client.subscribe(grant.topics.out, qos=0))
            except aiomqtt.MqttError as exc:
                raise RemoteError(
                    f"lost the broker at {self.broker.describe()} while asking for a session: "
                    f"{exc}; start again once it is back"
                ) from exc
            self.format = AudioFormat(grant.sample_rate, grant.frame_size)
            self._sampling = grant.sampling
            self.devices["node"] = f"{grant.node} via {self.broker.describe()}"
            try:
                return await self._converse(connections, client, grant)
            finally:
                if self._client is not None:
                    with contextlib.suppress(aiomqtt.MqttError):
                        close = encode_json({"cmd": "close"})
                        await call(self._client.publish(grant.topics.ctl, close, 1))

    async def _connect(self, connections: contextlib.AsyncExitStack) -> aiomqtt.Client:
        # No last will: the node notices a vanished client by its silence (--session-timeout).
        # A connection that failed stays on the stack until the end; leaving it is a no-op.
        client = make_client(self.broker, client_id=self.client_id)
        return await connections.enter_async_context(client)

    async def _converse(
        self, connections: contextlib.AsyncExitStack, client: aiomqtt.Client, grant: Grant
    ) -> Timings:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def speaker_lost(message: str) -> None:  # PortAudio's thread
            def stop() -> None:
                self.events.emit(ErrorEvent(self._elapsed(), -1, f"speaker lost: {message}"))
                task.cancel()

            loop.call_soon_threadsafe(stop)

        with self._audio(speaker_lost) as (source, sink, collected):
            if self.echo_cancel:
                self.echo = open_echo_canceller(self, self.format, source, sink)
            self._started = self._last_sent = self.clock.now()
            self.events.emit(StateEvent(0.0, 0, "started", self.model_name))
            if self.initial_record is not None:
                self.start_recording(self.initial_record)
            try:
                async with asyncio.TaskGroup() as tasks:
                    linking = tasks.create_task(self._link(connections, client, grant, sink))
                    await self._send(grant, source)
                    linking.cancel()
            except* RemoteError as group:
                for exc in _leaves(group):
                    self.failure = str(exc)
                    hint = "the recording is kept" if self.recorder is not None else ""
                    self.events.emit(ErrorEvent(self._elapsed(), -1, str(exc), hint, fatal=True))
            finally:
                self._lost += len(self._sent)
                self._sent.clear()
                counters = sink.counters()
                self.timings.counters.update(
                    dropped_input=self._lost,
                    **{name: counters.get(name, 0) for name in ("underruns", "overruns", "xruns")},
                )
                self.stop_recording()
                self.events.emit(StateEvent(self._elapsed(), self.timings.frames, "stopped"))
                self._report()
                if collected is not None:
                    write_wav(self.demo_out, collected.audio(), grant.sample_rate)
                    self.notice(f"wrote the reply to {self.demo_out}")
        return self.timings

    @contextlib.contextmanager
    def _audio(
        self, speaker_lost: Callable[[str], None]
    ) -> Iterator[tuple[AudioSource, AudioSink, CollectingSink | None]]:
        if self._source is not None and self._sink is not None:
            yield self._source, self._sink, None
            return
        with open_devices(self, self.format, speaker_lost) as devices:
            yield devices

    async def _link(
        self,
        connections: contextlib.AsyncExitStack,
        client: aiomqtt.Client,
        grant: Grant,
        sink: AudioSink,
    ) -> None:
        """Receive and send commands on one connection after another: when the broker goes
        away, reach it again while the node keeps the session, or end the conversation."""
        while True:
            self._client, self._heard = client, self.clock.now()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._receive(client, grant, sink))
                    tasks.create_task(self._control(client, grant))
                    tasks.create_task(self._watch_node(grant))
            except* aiomqtt.MqttError as group:
                problem = next(iter(_leaves(group)))
            self._client = None
            client = await self._reconnect(connections, grant, problem)

    async def _reconnect(
        self, connections: contextlib.AsyncExitStack, grant: Grant, problem: BaseException
    ) -> aiomqtt.Client:
        """A new connection with back-off, until the node would have closed the session."""
        lost_at, lost_before = self.clock.now(), self._lost
        # The node closes a session it has not heard from for its session timeout.
        deadline = self._last_sent + grant.session_timeout
        where = self.broker.describe()
        self.events.emit(
            ErrorEvent(
                self._elapsed(),
                self._frame_now(),
                f"lost the broker at {where} ({problem}): reconnecting",
                hint=f"the node {grant.node} keeps the session for {grant.session_timeout:g} s",
                code=BROKER_LOST,
            )
        )
        delay = RECONNECT_MIN
        while True:
            await asyncio.sleep(max(0.0, min(delay, deadline - self.clock.now())))
            try:
                client = await self._connect(connections)
                await call(client.subscribe(grant.topics.out, qos=0))
                break
            except aiomqtt.MqttError as exc:
                if self.clock.now() >= deadline:
                    raise RemoteError(
                        f"lost the broker at {where} ({exc}), and the node {grant.node} closes "
                        f"a session it has not heard from for {grant.session_timeout:g} s: the "
                        "conversation is over; start antiphon talk again once the broker is back"
                    ) from exc
                delay = min(2 * delay, RECONNECT_MAX)
        self._lost += len(self._sent)  # in flight when the broker went: their replies are gone
        self._sent.clear()
        away, lost = self.clock.now() - lost_at, self._lost - lost_before
        detail = f"the broker at {where} is back after {away:.1f} s: {lost} frames lost"
        self.events.emit(StateEvent(self._elapsed(), self._frame_now(), "reconnected", detail))
        self.notice(f"{detail}; the conversation goes on")
        return client

    async def _watch_node(self, grant: Grant) -> None:
        """End the conversation when the node stays silent as long as it would keep a session:
        it has stopped, or it lost the broker and has not found it again."""
        while True:
            await asyncio.sleep(min(0.5, grant.session_timeout / 4))
            silent = self.clock.now() - self._heard
            if silent > grant.session_timeout:
                raise RemoteError(
                    f"the node {grant.node} has not answered for {silent:.0f} s: it stopped or "
                    "lost the broker, and the conversation is over; start antiphon talk again"
                )

    async def _send(self, grant: Grant, source: AudioSource) -> None:
        """Until the source ends; then until the replies still on their way are in."""
        async for frame in source.frames():
            await self._send_frame(grant, frame)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT + 2 * grant.frame_duration):
                while self._sent:
                    await asyncio.sleep(grant.frame_duration / 4)

    async def _send_frame(self, grant: Grant, frame: CapturedFrame) -> None:
        # Frames the microphone dropped while a send was slow: lost (and counted), their
        # sequence numbers skipped, so that the node and the recording keep the time.
        self._sequence += frame.dropped_before
        self._lost += frame.dropped_before
        sequence, self._sequence = self._sequence, self._sequence + 1
        pcm, erle = frame.pcm, None
        if self.echo is not None:  # about a millisecond: on the loop, as the send itself
            cleaned = self.echo.cancel(frame.pcm, frame.time)  # also while the broker is away
            pcm, erle = cleaned.pcm, cleaned.erle_db
        client = self._client
        if client is None:  # the broker is away: the frame is lost (and counted), time goes on
            self._lost += 1
            return
        self._sent[sequence] = _Sent(frame.time, self.clock.now(), pcm, frame.pcm, erle)
        payload = encode_audio(AudioFrame(sequence, pcm, SampleFormat.S16))
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await call(client.publish(grant.topics.in_audio, payload))
            self._last_sent = self.clock.now()
        except TimeoutError:  # still in flight: it may go late, its reply is welcome
            pass
        except aiomqtt.MqttError:  # the link hears of it too, and reconnects
            if self._sent.pop(sequence, None) is not None:  # else a reconnect counted it
                self._lost += 1

    async def _control(self, client: aiomqtt.Client, grant: Grant) -> None:
        while True:
            command = await self._commands.get()
            try:
                await call(client.publish(grant.topics.ctl, encode_json(command), qos=1))
            except aiomqtt.MqttError:
                self._commands.put_nowait(command)  # again on the next connection
                raise

    async def _receive(self, client: aiomqtt.Client, grant: Grant, sink: AudioSink) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                if topic == grant.topics.out_audio:
                    self._heard = self.clock.now()
                    self._on_audio(decode_audio(payload, grant.frame_size), sink)
                elif topic in (grant.topics.out_text, grant.topics.out_event):
                    self._heard = self.clock.now()
                    self._on_event(decode_json(payload, limit=2**16))
            except ProtocolError as exc:
                log.warning("unreadable message from the node on %s: %s", topic, exc)

    def _on_audio(self, frame: AudioFrame, sink: AudioSink) -> None:
        now = self.clock.now()
        sent = self._sent.pop(frame.sequence, None)
        if sent is None:
            return  # a late reply to a frame already counted lost
        for older in [s for s in self._sent if s < frame.sequence]:  # skipped by the node
            self._lost += 1
            del self._sent[older]
        if self.echo is not None:  # before `play`: what is buffered sounds first
            self.echo.played(frame.pcm, now + sink.buffered_seconds())
        sink.play(frame.pcm)
        self._answered = frame.sequence
        if self.recorder is not None:  # frames skipped before it: silence in the recording
            try:
                self.recorder.write_frame(
                    frame.pcm, sent.pcm, sent.microphone, frame=frame.sequence
                )
            except RecordingError as exc:  # a full disk: the recording stops, not the talk
                self.events.emit(
                    ErrorEvent(self._elapsed(), frame.sequence, f"recording stopped: {exc}",
                               hint=WRITE_FAILED_HINT)
                )  # fmt: skip
                self.stop_recording()
        node_ms = frame.node_us / 1000
        compute_ms = (frame.encode_us + frame.lm_us + frame.decode_us) / 1000
        latency = 1000 * (now - sent.capture_time + sink.buffered_seconds())
        counters = sink.counters()
        stats = FrameStats(
            self._elapsed(),
            frame.sequence,
            encode_ms=frame.encode_us / 1000,
            lm_ms=frame.lm_us / 1000,
            decode_ms=frame.decode_us / 1000,
            compute_ms=compute_ms,
            real_time_factor=compute_ms / (1000 * self.format.frame_duration),
            dropped_input=self._lost,
            underruns=counters.get("underruns", 0),
            overruns=counters.get("overruns", 0),
            xruns=counters.get("xruns", 0),
            latency_ms=latency,
            input_level_db=level_db(sent.pcm),
            output_level_db=level_db(frame.pcm),
            echo_cancel=self.echo is not None,
            erle_db=sent.erle_db,
            node_ms=node_ms,
            network_ms=1000 * (now - sent.send_time) - node_ms,
        )
        self._last_stats = stats
        self.timings.add_stats(stats)
        self.events.emit(stats)

    def _on_event(self, message: dict[str, Any]) -> None:
        event = self._on_our_clock(event_from_record(message))
        if event is None:
            return
        self.events.emit(event)
        if isinstance(event, StateEvent) and event.state == "closed":
            raise RemoteError(
                f"the node closed the session ({event.detail}): the conversation is over; "
                "start antiphon talk again"
            )
        if isinstance(event, ErrorEvent) and event.code in (SESSION_CLOSED, UNKNOWN_SESSION):
            raise RemoteError(
                f"the node no longer has this session ({event.message}): the conversation is "
                "over; start antiphon talk again"
            )

    def _on_our_clock(self, event: Event | None) -> Event | None:
        """A node's event on this conversation's clock: the frame of the reply it came with
        (the node counts the frames it stepped, which skips those it never got), and now."""
        if event is None:
            return None
        frame = self._frame_now() if event.frame >= 0 else -1
        return dataclasses.replace(event, time=self._elapsed(), frame=frame)

    def _frame_now(self) -> int:
        """The conversation's frame for an event of now: the latest answered (and so recorded)."""
        return max(self._answered, 0)

    def _elapsed(self) -> float:
        return self.clock.now() - self._started

    def _report(self) -> None:
        figures = self.latency_report()
        if figures.get("network_ms") is None or figures.get("latency_ms") is None:
            return
        self.notice(
            f"latency median {figures['latency_ms']['median']:.0f} ms microphone to speaker: "
            f"network {figures['network_ms']['median']:.1f} ms "
            f"({100 * (figures['network_share'] or 0):.0f} %), node "
            f"{figures['node_ms']['median']:.1f} ms; {self._lost} frames lost"
        )


def _leaves(group: BaseException) -> list[BaseException]:
    """The exceptions in a (nested) exception group, or the exception itself."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`talk`'s remote options: --remote URL [--node NAME] and the broker's login and TLS."""
    add_broker_arguments(parser, "--remote", host_and_port=False)
    group = parser.add_argument_group("remote model")
    group.add_argument("--node", help="talk to this node (default: any free node of the fleet)")
    group.add_argument("--prefix", default="antiphon", help="topic prefix (default antiphon)")


def session_from_args(
    args: argparse.Namespace, notices: Callable[[str], None] | None = None
) -> RemoteTalkSession:
    sampling = None
    names = ("text_temperature", "text_top_k", "audio_temperature", "audio_top_k", "seed")
    given: dict[str, Any] = {name: getattr(args, name, None) for name in names}
    if any(value is not None for name, value in given.items() if name != "seed"):
        defaults = dataclasses.asdict(SamplingParams())
        sampling = SamplingParams(**{k: defaults[k] if v is None else v for k, v in given.items()})
    return RemoteTalkSession(
        broker_from_args(args, "--remote"),
        prefix=args.prefix,
        node=args.node,
        sampling=sampling,
        input_device=getattr(args, "input_device", None),
        output_device=getattr(args, "output_device", None),
        record=getattr(args, "record", None),
        demo_out=getattr(args, "demo_out", Path("antiphon-talk.wav")),
        notices=notices,
        echo_cancel=not getattr(args, "no_echo_cancel", False),
        keep_microphone=getattr(args, "record_microphone", False),
    )
