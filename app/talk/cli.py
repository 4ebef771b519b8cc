"""`antiphon talk`: microphone -> model -> speaker, the inner monologue shown as it comes.

The model runs here (`TalkSession`) or, with --remote, on an `antiphon serve` node
(`RemoteTalkSession`); either is shown in the full-screen TUI (app/talk/tui/), or printed with
--no-tui or when stdout is not a terminal: the monologue on stdout, notices on stderr. Ctrl-C
and SIGTERM stop it cleanly (the recording is closed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from app.core.commands import run_until_signalled
from app.core.engine import COMPILE_NOTICE, Engine
from app.core.events import CAUGHT_UP, ErrorEvent, Event, HeardEvent, StateEvent, TextEvent
from app.core.models import add_model_arguments, load_from_args

from . import remote
from .session import TalkSession


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--input-device", help="microphone: index or name (see antiphon devices)")
    parser.add_argument("--output-device", help="speaker: index or name")
    parser.add_argument("--record", type=Path, metavar="DIR", help="record the session here")
    parser.add_argument(
        "--demo-out",
        type=Path,
        default=Path("antiphon-talk.wav"),
        help="where the reply goes when there is no speaker",
    )
    parser.add_argument(
        "--record-dir",
        type=Path,
        default=Path("recordings"),
        metavar="DIR",
        help="where the TUI's record key (c) records: DIR/<date-time> (default %(default)s)",
    )
    parser.add_argument(
        "--no-echo-cancel",
        action="store_true",
        help="hear the microphone as it is: no removal of the speaker's echo (it is on by "
        "default, so that the assistant does not hear itself through loudspeakers; with "
        "headphones it is not needed)",
    )
    parser.add_argument(
        "--record-microphone",
        action="store_true",
        help="recordings also keep the raw microphone, before echo cancellation, as "
        "microphone.wav (same clock as session.wav, whose user channel is what the model heard)",
    )
    remote.add_arguments(parser)
    parser.add_argument(
        "--no-tui",
        action="store_true",
        help="print the inner monologue instead of the full-screen TUI (also when stdout is "
        "not a terminal)",
    )


class TerminalPrinter:
    """The inner monologue on stdout as it comes; notices and problems on stderr, each on a line
    of its own. What the model wrote down of the user's words (a model whose monologue does so)
    goes on a line of its own, after "you: "."""

    def __init__(self) -> None:
        self._hearing = False
        self._mid_line = False  # monologue printed since the last line break

    def emit(self, event: Event) -> None:
        if isinstance(event, TextEvent | HeardEvent):
            text, heard = event.text, isinstance(event, HeardEvent)
            if heard != self._hearing or not self._mid_line:
                self._hearing = heard
                self.end_line()
                print("you: " if heard else "", end="")
                text = text.lstrip()
            print(text, end="", flush=True)
            self._mid_line = True
        elif isinstance(event, ErrorEvent):
            self.notice(event.message + (f" ({event.hint})" if event.hint else ""))
        elif isinstance(event, StateEvent) and event.state == CAUGHT_UP:
            self.notice(event.detail)

    def notice(self, text: str) -> None:
        self.end_line()
        print(f"antiphon: {text}", file=sys.stderr, flush=True)

    def end_line(self) -> None:
        if self._mid_line:
            print(flush=True)
            self._mid_line = False


def run(args: argparse.Namespace) -> int:
    use_tui = not args.no_tui and sys.stdout.isatty()
    if args.remote:
        return _run_remote(args, use_tui)
    model = load_from_args(args)
    if model.notice and not use_tui:
        print(f"antiphon: {model.notice}", file=sys.stderr)
    engine = Engine(model)
    if model.compiled:
        print(f"antiphon: {COMPILE_NOTICE}", file=sys.stderr, flush=True)
    engine.warm_up()
    if not use_tui:
        printer = TerminalPrinter()
        session = TalkSession(
            engine,
            args.input_device,
            args.output_device,
            args.record,
            args.demo_out,
            echo_cancel=not args.no_echo_cancel,
            notices=printer.notice,
            keep_microphone=args.record_microphone,
        )
        session.events.sinks.append(printer)
        return asyncio.run(_talk_in_terminal(session, printer))

    from .tui import logging_into, make_app  # lazily: the headless server never loads textual

    session = TalkSession(
        engine,
        args.input_device,
        args.output_device,
        args.record,
        args.demo_out,
        notices=lambda text: tui.notice(text),  # `tui` exists before the session runs
        echo_cancel=not args.no_echo_cancel,
        keep_microphone=args.record_microphone,
    )
    tui = make_app(session, args.record_dir)
    if model.notice:
        tui.notice(model.notice)
    with logging_into(tui):
        tui.run()
    return tui.return_code or 0


def _run_remote(args: argparse.Namespace, use_tui: bool) -> int:
    """The model on a server (`antiphon serve`), the microphone and speaker here."""
    if not use_tui:
        printer = TerminalPrinter()
        session = remote.session_from_args(args, notices=printer.notice)
        session.events.sinks.append(printer)
        return asyncio.run(_remote_in_terminal(session, printer))
    from .tui import logging_into, make_app

    session = remote.session_from_args(args, notices=lambda text: tui.notice(text))
    tui = make_app(session, args.record_dir)
    with logging_into(tui):
        tui.run()
    return tui.return_code or 0


async def _talk_in_terminal(session: TalkSession, printer: TerminalPrinter) -> int:
    print(
        f"antiphon: {session.model_name}"
        + (f" | recording to {session.initial_record}" if session.initial_record else "")
        + " | Ctrl-C to stop",
        file=sys.stderr,
    )
    timings = await run_until_signalled(session.run()) or session.timings
    printer.end_line()
    if timings is not None:
        figures = timings.summary(session.engine.frame_duration)
        compute = figures.get("compute_ms") or {"median": 0.0}
        print(
            f"antiphon: {figures['frames']} frames, compute median "
            f"{compute['median']:.1f} ms (real-time factor "
            f"{figures.get('real_time_factor') or 0:.2f}), {timings.counters['dropped_input']} "
            "microphone frames dropped",
            file=sys.stderr,
        )
    return 0


async def _remote_in_terminal(session: remote.RemoteTalkSession, printer: TerminalPrinter) -> int:
    print(f"antiphon: {session.model_name} | Ctrl-C to stop", file=sys.stderr)
    await run_until_signalled(session.run())  # the session reports its latency itself
    printer.end_line()
    return 1 if session.failure is not None else 0
