"""Connecting to an MQTT broker: the options `serve` and `talk --remote` share, and the client.

Every connection is MQTT 5 (shared subscriptions, response topics) with Nagle's algorithm off:
with it on, a QoS 1 round trip on loopback took 88 ms instead of about 1 ms. aiomqtt sets
socket options on paho's socket right after it connects, before any session traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt import ProtocolVersion, TLSParameters, Will

from model.errors import ConfigError

PASSWORD_ENV = "ANTIPHON_MQTT_PASSWORD"
USERNAME_ENV = "ANTIPHON_MQTT_USERNAME"
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

T = TypeVar("T")


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "localhost"
    port: int = 1883
    client_id: str | None = None  # None: the broker's client library makes one up
    username: str | None = None
    password: str | None = None
    tls: bool = False  # on with mqtts://, or with any --tls-* option
    tls_ca: Path | None = None  # None with tls: the system's trusted CAs
    tls_cert: Path | None = None  # client certificate, for brokers that require one
    tls_key: Path | None = None
    keepalive: int = 30  # seconds; the broker sends the last will after 1.5x this of silence

    def describe(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host[:port] (1883) or mqtts://host[:port] (8883) -> host, port, tls."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{url!r} is not a broker address like mqtt://host:1883 or mqtts://host")
    if parts.path not in ("", "/") or parts.username or parts.password:
        raise ConfigError(
            f"{url!r}: give credentials with --username and ${PASSWORD_ENV}, not in the URL"
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"{url!r}: {exc}") from exc
    return parts.hostname, port, tls


def add_broker_arguments(
    parser: argparse.ArgumentParser, url_option: str, *, host_and_port: bool
) -> None:
    group = parser.add_argument_group("MQTT broker")
    group.add_argument(
        url_option, metavar="URL", help="mqtt://host[:port] or mqtts://host[:port] (TLS)"
    )
    if host_and_port:
        group.add_argument("--host", help="broker host (instead of the URL; default localhost)")
        group.add_argument("--port", type=int, help="broker port (default 1883, 8883 with TLS)")
    group.add_argument("--client-id", help="MQTT client identifier (default: made up)")
    group.add_argument("--username", help=f"broker username (or ${USERNAME_ENV})")
    group.add_argument(
        "--password", help=f"broker password; prefer ${PASSWORD_ENV}, which `ps` does not show"
    )
    group.add_argument("--tls-ca", type=Path, help="CA certificate(s) that signed the broker's")
    group.add_argument("--tls-cert", type=Path, help="client certificate (PEM)")
    group.add_argument("--tls-key", type=Path, help="client certificate's key (PEM)")
    group.add_argument("--keepalive", type=int, default=30, help="seconds (default 30)")


def broker_from_args(args: argparse.Namespace, url_option: str) -> BrokerSettings:
    url = getattr(args, url_option.lstrip("-").replace("-", "_"))
    host, port, tls = parse_broker_url(url) if url else ("localhost", 1883, False)
    if getattr(args, "host", None):
        if url:
            raise ConfigError(f"give the broker either as {url_option} or as --host, not both")
        host = args.host
    if getattr(args, "port", None):
        port = args.port
    tls = tls or any((args.tls_ca, args.tls_cert, args.tls_key))
    if url is None and tls and not getattr(args, "port", None):
        port = 8883
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (args.tls_ca, args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} does not exist")
    if args.keepalive < 5:
        raise ConfigError("--keepalive must be at least 5 seconds")
    return BrokerSettings(
        host=host,
        port=port,
        client_id=args.client_id,
        username=args.username or os.environ.get(USERNAME_ENV),
        password=args.password or os.environ.get(PASSWORD_ENV),
        tls=tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        keepalive=args.keepalive,
    )


def make_client(
    settings: BrokerSettings,
    *,
    will: Will | None = None,
    client_id: str | None = None,
    max_queued_incoming: int = 0,
) -> aiomqtt.Client:
    """An unconnected MQTT 5 client (`async with` connects) with TCP_NODELAY on its socket."""
    tls_params = None
    if settings.tls:
        tls_params = TLSParameters(
            ca_certs=str(settings.tls_ca) if settings.tls_ca else None,
            certfile=str(settings.tls_cert) if settings.tls_cert else None,
            keyfile=str(settings.tls_key) if settings.tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
            ciphers=None,
        )
    return aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=client_id or settings.client_id,
        username=settings.username,
        password=settings.password,
        protocol=ProtocolVersion.V5,
        will=will,
        keepalive=settings.keepalive,
        tls_params=tls_params,
        socket_options=[NODELAY],
        max_queued_incoming_messages=max_queued_incoming,
    )


def socket_nodelay(client: aiomqtt.Client) -> bool:
    """Whether the connected client's socket has Nagle's algorithm off (for tests and checks)."""
    sock = client._client.socket()  # noqa: SLF001 (aiomqtt does not expose the socket)
    return isinstance(sock, socket.socket) and bool(
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    )


async def call(request: Awaitable[T]) -> T:
    """Await an aiomqtt publish/subscribe without losing a cancellation.

    aiomqtt waits with `asyncio.wait_for`, which in Python 3.11 returns normally when the task
    is cancelled just as the call completes: the cancellation is gone, and a serving loop would
    wait forever at its next `await`. Raise it again here (Python 3.12 fixed `wait_for`).
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await request
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result
