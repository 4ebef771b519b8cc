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
    answers): the request is repeated with back-off, `attempts` times in all.
    """
    if not valid_level(owner):
        raise RemoteError(f"{owner!r} cannot be part of a topic: use a simpler username")
    reply_to = f"{prefix}/reply/{owner}/{secrets.token_urlsafe(8)}"
    target = f"{prefix}/{node}/requests" if node else f"{prefix}/requests"
    body = {"owner": owner, "format": format.name.lower(), "sampling": sampling or {}}
    await call(client.subscribe(reply_to, qos=1))
    problem = "no node answered"
    try:
        for attempt in range(attempts):
            correlation = secrets.token_bytes(8)
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = reply_to
            properties.CorrelationData = correlation
            await call(client.publish(target, encode_json(body), qos=1, properties=properties))
            answer = await _reply(client, reply_to, correlation)
            if answer is not None and answer.get("ok"):
                return _grant(answer, prefix)
            if answer is not None:
                problem = f"{answer.get('node')}: {answer.get('message')}"
                if answer.get("code") != FULL:
                    break
            await asyncio.sleep(0.2 * 2**attempt)
    finally:
        await call(client.unsubscribe(reply_to))
    where = f"node {node}" if node else "the fleet"
    raise RemoteError(f"no session from {where} at {target}: {problem}")


async def _reply(client: aiomqtt.Client, topic: str, correlation: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REPLY_TIMEOUT):
            async for message in client.messages:
                received = getattr(message.properties, "CorrelationData", None)
                if message.topic.value == topic and received == correlation:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
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
