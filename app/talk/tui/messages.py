"""The conversation's events as Textual messages, and the sink that posts them.

The conversation runs in the app's event loop (a worker), so `MessageBridge.emit` is called
there; `post_message` is thread-safe as well, should a sink ever be called from another thread.
Speech activity is derived here, from every frame, before frame figures are merged: a burst of
`StatsUpdated` collapses into the newest one (`can_replace`), but no speech start or end is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.message import Message
from textual.message_pump import MessagePump

from app.core.events import ErrorEvent, Event, FrameStats, HeardEvent, StateEvent, TextEvent

Side = Literal["user", "assistant"]

# Field names avoid `time`: Message already has one (when the message was created).


@dataclass
class TextArrived(Message):
    """New inner-monologue text (the session has already joined word pieces into text)."""

    at: float  # conversation seconds
    text: str
    heard: bool = False  # what the model wrote down of the user's words, not its own


@dataclass
class StatsUpdated(Message):
    """The newest frame figures; a newer one replaces an older one still in the queue."""

    stats: FrameStats
    user_speaking: bool
    assistant_speaking: bool

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatsUpdated)


@dataclass
class SpeechChanged(Message):
    """One side started or stopped speaking."""

    side: Side
    speaking: bool
    at: float


@dataclass
class StateChanged(Message):
    """started, stopped, reset, muted, unmuted..."""

    state: str
    detail: str
    at: float


@dataclass
class ErrorReported(Message):
    message: str
    hint: str
    fatal: bool
    code: str = ""  # a condition (events.CONDITIONS) lasts until a `caught_up` state


@dataclass
class Noticed(Message):
    """Something the session wants the person to know (no microphone, a file written...)."""

    text: str
    severity: Literal["warning", "error"] = "warning"


class VoiceActivity:
    """Speaking or not, from one level per frame: a threshold with a hangover.

    A frame at or above `threshold_db` counts as speech; speech ends `hangover` seconds after
    the last such frame, so the dips between syllables and words do not split an utterance.
    It is a level detector, not a voice detector: steady noise above the threshold counts too
    (-45 dBFS sits above a quiet room through a laptop microphone and below normal speech).
    """

    def __init__(self, threshold_db: float = -45.0, hangover: float = 0.5) -> None:
        self.threshold_db = threshold_db
        self.hangover = hangover
        self.speaking = False
        self._last_loud = float("-inf")

    def update(self, level_db: float, now: float) -> bool:
        if level_db >= self.threshold_db:
            self._last_loud = now
            self.speaking = True
        elif self.speaking and now - self._last_loud >= self.hangover:
            self.speaking = False
        return self.speaking


class MessageBridge:
    """An EventSink posting each conversation event to `target` as a message.

    While the microphone is muted the model hears silence, so the user counts as silent.
    """

    def __init__(self, target: MessagePump) -> None:
        self.target = target
        self.user = VoiceActivity()
        self.assistant = VoiceActivity()
        self.muted = False

    def emit(self, event: Event) -> None:
        post = self.target.post_message
        if isinstance(event, TextEvent | HeardEvent):
            post(TextArrived(event.time, event.text, isinstance(event, HeardEvent)))
        elif isinstance(event, FrameStats):
            user_level = -120.0 if self.muted else event.input_level_db
            sides: tuple[tuple[Side, VoiceActivity, float], ...] = (
                ("user", self.user, user_level),
                ("assistant", self.assistant, event.output_level_db),
            )
            for side, detector, level in sides:
                was = detector.speaking
                if detector.update(level, event.time) != was:
                    post(SpeechChanged(side, detector.speaking, event.time))
            post(StatsUpdated(event, self.user.speaking, self.assistant.speaking))
        elif isinstance(event, StateEvent):
            if event.state in ("muted", "unmuted"):
                self.muted = event.state == "muted"
            post(StateChanged(event.state, event.detail, event.time))
        elif isinstance(event, ErrorEvent):
            post(ErrorReported(event.message, event.hint, event.fatal, event.code))
