"""`antiphon serve`: many conversations on one model, batched, over MQTT (docs/serve.md).

Also `python -m app.serve ...`, with the same options.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from app.core.commands import main as run_main
from app.core.commands import run_until_signalled
from app.core.models import add_model_arguments, load_from_args
from app.wire.mqtt import add_broker_arguments, broker_from_args
from app.wire.protocol import ProtocolError
from model.errors import ConfigError

from .node import ServeOptions, Server


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
    if model.notice:
        print(f"antiphon: serving {model.notice}", file=sys.stderr)
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
    asyncio.run(run_until_signalled(server.run()))  # the node says goodbye as it stops
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.serve ...`, the same as `antiphon serve ...`."""
    parser = argparse.ArgumentParser(prog="antiphon serve", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return run_main(parser, argv)
