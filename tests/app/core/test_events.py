"""Event records: what the model says and what it wrote down of the user are two kinds, and
both travel to a remote terminal as the node sends them."""

from __future__ import annotations

import json

from app.core.events import (
    ErrorEvent,
    HeardEvent,
    StateEvent,
    TextEvent,
    event_from_record,
    monologue_event,
)


def test_heard_words_are_an_event_of_their_own_and_cross_the_wire() -> None:
    said, heard = (
        monologue_event(1.5, 19, 7, " Five.", False),
        monologue_event(1.2, 15, 3, " add", True),
    )
    assert type(said) is TextEvent and type(heard) is HeardEvent
    assert json.loads(heard.to_json()) == {
        "type": "heard", "time": 1.2, "frame": 15, "token": 3, "text": " add"
    }  # fmt: skip
    for event in (said, heard, StateEvent(0.0, 0, "opened", "x"), ErrorEvent(3.2, 40, "bad")):
        assert event_from_record(json.loads(event.to_json())) == event
    assert event_from_record({"type": "mystery", "time": 0.0, "frame": 0}) is None
