"""What every entry point shares: one `main()` around a parser, and running until a signal.

    sys.exit(main(build_parser(), argv))               # `antiphon`, python -m app.train / app.serve
    result = await run_until_signalled(server.run())   # None when SIGINT or SIGTERM stopped it

A parser's subcommands set `handler` (a function of the parsed arguments that returns the exit
status). Errors a user can cause (AntiphonError, AudioError) end the command with their message
and status 2; Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from audio_io.errors import AudioError
from model.errors import AntiphonError

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    name: str = "antiphon",
    log_level: int = logging.WARNING,
) -> int:
    """Parse `argv`, set up logging (`log_level`, or INFO with -v/--verbose where the parser
    has it) and run the chosen `handler`; returns the exit status."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else log_level,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (AntiphonError, AudioError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def run_until_signalled(coroutine: Coroutine[Any, Any, T]) -> T | None:
    """Run `coroutine` as a task until it ends, or until SIGINT or SIGTERM cancels it (then
    None). The task's own cleanup runs either way; a cancellation of the caller goes on up."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coroutine)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise
        return None
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
