"""The `antiphon` command line: talk, run, devices, bench (and, as they land, eval, serve)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from app.bench import cli as bench
from app.eval import cli as evaluate
from app.run import offline
from app.talk import cli as talk
from app.train import cli as train
from audio_io.errors import AudioError
from model.errors import AntiphonError

from . import serve


def _devices(_args: argparse.Namespace) -> int:
    from audio_io.devices import format_devices

    print(format_devices())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antiphon", description="Full-duplex spoken dialogue (Moshi architecture)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    talking = commands.add_parser(
        "talk", help="talk with the assistant: microphone in, speaker out, the monologue shown"
    )
    talk.add_arguments(talking)
    talking.set_defaults(handler=talk.run)

    running = commands.add_parser(
        "run", help="stream an audio file (or a Full-Duplex-Bench tree) through the model"
    )
    offline.add_arguments(running)
    running.set_defaults(handler=offline.run)

    serving = commands.add_parser(
        "serve", help="headless: serve many conversations over MQTT on one model"
    )
    serve.add_arguments(serving)
    serving.set_defaults(handler=serve.run)

    scoring = commands.add_parser(
        "eval", help="score recorded conversations: turn-taking, latency, a timeline picture"
    )
    evaluate.add_arguments(scoring)
    scoring.set_defaults(handler=evaluate.run)

    training = commands.add_parser(
        "train", help="make the demo model: dialogues, tokenizer, codec, LM (docs/demo-model.md)"
    )
    train.add_arguments(training)
    training.set_defaults(handler=train.run)

    listing = commands.add_parser("devices", help="list sound devices")
    listing.set_defaults(handler=_devices)

    timing = commands.add_parser("bench", help="time one frame, ours and the reference's")
    bench.add_arguments(timing)
    timing.set_defaults(handler=bench.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (AntiphonError, AudioError) as exc:
        print(f"antiphon: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
