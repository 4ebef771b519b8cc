"""The `antiphon` command: one subcommand per front door.

    talk   app/talk    a conversation through this machine's microphone and speaker
    run    app/run     audio files (or a Full-Duplex-Bench tree) streamed through the model
    serve  app/serve   the headless MQTT node: many conversations batched on one model
    eval   app/eval    recorded conversations scored
    train  app/train   the demo model made
    bench  app/bench   one frame timed, ours and the reference's
    devices            the sound devices, listed

This is the only module that imports the front doors; they never import each other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.bench import cli as bench
from app.core.commands import main as run_main
from app.eval import cli as evaluate
from app.run import offline
from app.serve import cli as serve
from app.talk import cli as talk
from app.train import cli as train


def _devices(_args: argparse.Namespace) -> int:
    from audio_io.devices import format_devices  # PortAudio loads only when it is needed

    print(format_devices())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antiphon", description="Full-duplex spoken dialogue (Moshi architecture)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, text in (
        ("talk", talk, "talk with the assistant: microphone in, speaker out, the monologue shown"),
        ("run", offline, "stream an audio file (or a Full-Duplex-Bench tree) through the model"),
        ("serve", serve, "headless: serve many conversations over MQTT on one model"),
        (
            "eval",
            evaluate,
            "score recorded conversations: turn-taking, latency, a timeline picture",
        ),
        (
            "train",
            train,
            "make the demo model: dialogues, tokenizer, codec, LM (docs/demo-model.md)",
        ),
    ):
        command = commands.add_parser(name, help=text)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    listing = commands.add_parser("devices", help="list sound devices")
    listing.set_defaults(handler=_devices)
    timing = commands.add_parser("bench", help="time one frame, ours and the reference's")
    bench.add_arguments(timing)
    timing.set_defaults(handler=bench.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
