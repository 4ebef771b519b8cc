"""A client's side of the protocol: asking a node, or the fleet, for a session.

    grant = await request_session(client, "antiphon", owner)   # a connected aiomqtt client
    grant.topics.in_audio, grant.frame_size, grant.sampling     # where and how to talk

A request goes to one node's request topic, or with node=None to the fleet's shared
subscription (one free node takes it); the answer comes back on a reply topic of the client's
own, matched by correlation data. docs/protocol.md has the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from model import SamplingParams
from model.errors import AntiphonError

from .mqtt import call
from .protocol import (
    FULL,
    ProtocolError,
    SampleFormat,
    SessionTopics,
    decode_json,
    encode_json,
    valid_level,
)

REPLY_TIMEOUT = 3.0  # seconds to wait for a node to answer a session request
FULL_GRACE = 0.5  # seconds after a request before the retained topics may say "all full"


class RemoteError(AntiphonError):
    """No node gave a session, or the session ended on the node's side."""


@dataclass(frozen=True)
class Grant:
    """A node's answer to a session request: where the session lives and its audio format."""

    node: str
    owner: str
    session: str
    topics: SessionTopics
    model: str
    format: SampleFormat
    sample_rate: int
    frame_size: int
    session_timeout: float
    sampling: SamplingParams  # what the node applies: its defaults and the request's changes

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate


async def request_session(
    client: aiomqtt.Client,
    prefix: str,
    owner: str,
    *,
    node: str | None = None,
    format: SampleFormat = SampleFormat.S16,
    sampling: dict[str, Any] | None = None,
    attempts: int = 3,
) -> Grant:
    """Ask a node (or, with node=None, the fleet) for a session; the client must be connected.

    A full node answers `full` (or, having left the fleet's shared subscription, nobody
    answers): the request is repeated with back-off, `attempts` times in all. When the nodes'
    retained info and status topics say that every node is full or offline, the answer comes
    at once (FULL_GRACE), not after every attempt has timed out.
    """
    if not valid_level(owner):
        raise RemoteError(f"{owner!r} cannot be part of a topic: use a simpler username")
    reply_to = f"{prefix}/reply/{owner}/{secrets.token_urlsafe(8)}"
    target = f"{prefix}/{node}/requests" if node else f"{prefix}/requests"
    body = {"owner": owner, "format": format.name.lower(), "sampling": sampling or {}}
    fleet = Fleet(prefix, node)
    await call(client.subscribe(reply_to, qos=1))
    for topic in fleet.topics:
        await call(client.subscribe(topic, qos=1))
    problem = "no node answered"
    try:
        for attempt in range(attempts):
            correlation = secrets.token_bytes(8)
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = reply_to
            properties.CorrelationData = correlation
            await call(client.publish(target, encode_json(body), qos=1, properties=properties))
            answer = await _reply(client, reply_to, correlation, fleet)
            if answer is not None and answer.get("ok"):
                return _grant(answer, prefix)
            if answer is not None:
                problem = f"{answer.get('node')}: {answer.get('message')}"
                if answer.get("code") != FULL:
                    break
            if (unavailable := fleet.unavailable()) is not None:
                problem = unavailable
                break
            await asyncio.sleep(0.2 * 2**attempt)
    finally:
        await call(client.unsubscribe(reply_to))
        for topic in fleet.topics:
            await call(client.unsubscribe(topic))
    where = f"node {node}" if node else "the fleet"
    raise RemoteError(f"no session from {where} at {target}: {problem}")


class Fleet:
    """What the nodes' retained status and info topics say (docs/protocol.md): which nodes are
    online, and their free slots. Empty where the broker's ACL lets the client read neither."""

    def __init__(self, prefix: str, node: str | None) -> None:
        self.prefix = prefix
        self.topics = [f"{prefix}/{node or '+'}/{name}" for name in ("status", "info")]
        self.status: dict[str, bytes] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def update(self, topic: str, payload: bytes) -> bool:
        """Take a status or info message; False for any other topic."""
        head, _, name = topic.rpartition("/")
        node = head.removeprefix(self.prefix + "/")
        if head == node or "/" in node or name not in ("status", "info"):
            return False
        if name == "status":
            self.status[node] = payload
        else:
            with contextlib.suppress(ProtocolError):
                self.info[node] = decode_json(payload, limit=2**16)
        return True

    def unavailable(self) -> str | None:
        """Why no node known here can take a session (every one full or offline), or None."""
        known = sorted(set(self.status) | set(self.info))
        if not known:
            return None
        online = [n for n in known if self.status.get(n, b"online") != b"offline"]
        if not online:
            return f"no node is online ({', '.join(known)}: offline); start antiphon serve"
        slots = {n: self.info.get(n, {}) for n in online}
        if all(
            isinstance(i.get("free_slots"), int) and i["free_slots"] <= 0 for i in slots.values()
        ):
            busy = ", ".join(f"{n}: all {i.get('slots')} slots busy" for n, i in slots.items())
            return (
                f"every node is full ({busy}); try again when a conversation ends, "
                "or start another node"
            )
        return None


async def _reply(
    client: aiomqtt.Client, topic: str, correlation: bytes, fleet: Fleet
) -> dict[str, Any] | None:
    """The answer to one request; None after REPLY_TIMEOUT, or after FULL_GRACE when the
    nodes' retained topics say that none can take it."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    messages = client.messages
    while (waited := loop.time() - asked) < REPLY_TIMEOUT:
        if waited >= FULL_GRACE and fleet.unavailable() is not None:
            return None
        wake = FULL_GRACE - waited if waited < FULL_GRACE else REPLY_TIMEOUT - waited
        try:
            async with asyncio.timeout(wake):
                message = await anext(messages)
        except TimeoutError:
            continue
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if fleet.update(message.topic.value, payload):
            continue
        received = getattr(message.properties, "CorrelationData", None)
        if message.topic.value == topic and received == correlation:
            try:
                return decode_json(payload)
            except ProtocolError as exc:
                raise RemoteError(f"the node's reply is not readable: {exc}") from exc
    return None


def _grant(answer: dict[str, Any], prefix: str) -> Grant:
    try:
        node, owner, session = answer["node"], answer["owner"], answer["session"]
        topics = SessionTopics(f"{prefix}/{node}/session/{owner}/{session}")
        if answer["topic"] != topics.base:
            raise RemoteError(f"the node named topic {answer['topic']}, not {topics.base}")
        return Grant(
            node=node,
            owner=owner,
            session=session,
            topics=topics,
            model=str(answer["model"]),
            format=SampleFormat.named(answer["format"]),
            sample_rate=int(answer["sample_rate"]),
            frame_size=int(answer["frame_size"]),
            session_timeout=float(answer["session_timeout_s"]),
            sampling=SamplingParams(**answer["sampling"]),
        )
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise RemoteError(
            f"the node's reply lacks {exc}: is it the same antiphon version?"
        ) from exc
