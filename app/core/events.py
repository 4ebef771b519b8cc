"""What a conversation reports as it runs: small, JSON-ready event records and their sinks.

Producers (the engine thread, the audio callbacks' accounting, the runtime) create events; sinks
(the recording's events.jsonl, the terminal printer, later the TUI and MQTT) consume them. Every
event carries the conversation time in seconds and the frame index it belongs to.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    time: float  # seconds since the conversation started (the frame clock)
    frame: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class TextEvent(Event):
    """A visible piece of the inner monologue: what the model says (PAD and specials are not
    reported)."""

    kind: ClassVar[str] = "text"
    token: int
    text: str


@dataclass(frozen=True)
class HeardEvent(Event):
    """A piece of what the model wrote down of the user's words, in its monologue between the
    open and close marks (a model whose monologue does so: `LMConfig.heard_ids`). An event of its
    own, so that whatever reads "text" reads only what the model says."""

    kind: ClassVar[str] = "heard"
    token: int
    text: str


def monologue_event(time: float, frame: int, token: int, text: str, heard: bool) -> Event:
    """A monologue piece as its event: heard words (`StepResult.heard`) or said ones."""
    return (HeardEvent if heard else TextEvent)(time, frame, token, text)


@dataclass(frozen=True)
class FrameStats(Event):
    """Per-frame figures: compute times, real-time factor, queue health, latency."""

    kind: ClassVar[str] = "frame"
    encode_ms: float
    lm_ms: float
    decode_ms: float
    compute_ms: float  # encode + LM + decode, as measured around the whole step
    real_time_factor: float  # compute time / frame duration (> 1: slower than real time)
    dropped_input: int = 0  # microphone frames dropped so far (queue full)
    underruns: int = 0  # speaker blocks played as silence so far
    overruns: int = 0  # output audio dropped so far to keep latency bounded
    xruns: int = 0  # device-reported over/underflows so far
    latency_ms: float | None = None  # microphone-to-speaker, when measurable
    input_level_db: float = -120.0  # RMS of the user's frame, dBFS
    output_level_db: float = -120.0  # RMS of the assistant's frame, dBFS
    echo_cancel: bool = False  # the microphone's echo of the speaker is being removed
    # echo return loss enhancement: microphone over cleaned power, dB; None while the far end
    # (the assistant) is silent. An estimate: the user's voice in the frame lowers it.
    erle_db: float | None = None
    node_ms: float | None = None  # (talk --remote) the node's time for this frame
    network_ms: float | None = None  # (talk --remote) the round trip less the node's time


@dataclass(frozen=True)
class StateEvent(Event):
    """A change in the conversation: started, stopped, reset, muted, recording..."""

    kind: ClassVar[str] = "state"
    state: str
    detail: str = ""


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something went wrong; `hint` says what to do. The conversation may go on."""

    kind: ClassVar[str] = "error"
    message: str
    hint: str = ""
    fatal: bool = False
    # What kind of problem, for whoever acts on it: a node's error code (app/wire/protocol.py),
    # or SLOWER_THAN_REAL_TIME; "" when nothing acts on it. A condition with a code in
    # CONDITIONS lasts until a StateEvent CAUGHT_UP says it is over.
    code: str = ""


SLOWER_THAN_REAL_TIME = "slower_than_real_time"  # the model here cannot keep up with the audio
NODE_BEHIND = "node_behind"  # the serving node cannot keep up (app/wire/protocol.py has it too)
CONDITIONS = (SLOWER_THAN_REAL_TIME, NODE_BEHIND)
CAUGHT_UP = "caught_up"  # a StateEvent: the condition above is over


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class EventFanout:
    """Send each event to several sinks."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)


class EventLog:
    """Keep events in memory (tests, summaries)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def event_from_record(record: dict[str, Any]) -> Event | None:
    """A node's text, heard, state or error JSON (as `to_dict` wrote it) back into its event;
    None for any other or a malformed one."""
    kinds: dict[str, type[Event]] = {
        k.kind: k for k in (TextEvent, HeardEvent, StateEvent, ErrorEvent)
    }
    kind = kinds.get(str(record.get("type")))
    if kind is None:
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    try:
        return kind(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return None
