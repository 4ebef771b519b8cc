"""`antiphon eval`: score recorded conversations, per recording and in aggregate.

    antiphon eval RECORDING... [--json] [--out DIR] [--no-timeline]

Each argument is a recording folder (session.wav, events.jsonl, meta.json: app/core/recording.py), a
Full-Duplex-Bench (FDB) folder (input.wav = user, output.wav = assistant, as `antiphon run --fdb`
writes them), or a folder holding many of either at any depth. The FDB category of a folder
comes from the folder names in its path (candor_pause_handling, icc_backchannel,
candor_turn_taking, synthetic_user_interruption, as in the benchmark's dataset).

Next to each recording (or under --out DIR, mirrored) go `eval.json` (its report) and
`timeline.png`. A folder that cannot be evaluated is reported by name and the others are still
evaluated; the exit status is then 1. docs/evaluation.md explains every number.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.core.timing import Timings, distribution
from audio_io.errors import AudioError

from . import fdb, monologue, timeline, turns, vad
from .folders import Conversation, EvaluationError, Found, find_conversations, load
from .turns import Segment, TurnEvent, TurnRules

REPORT_FILE = "eval.json"
TIMELINE_FILE = "timeline.png"
AGGREGATE_FILE = "report.json"


@dataclass
class Evaluated:
    found: Found
    report: dict[str, Any]
    turn_events: list[TurnEvent]
    compute_ms: list[float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Score recorded conversations: who spoke when, turn-taking in Full-Duplex-Bench's "
        "terms, the inner monologue against the audio, the runtime's timings."
    )
    parser.add_argument(
        "recordings",
        type=Path,
        nargs="+",
        metavar="RECORDING",
        help="a recording folder, a Full-Duplex-Bench folder (input.wav + output.wav), or a "
        "folder holding many of either",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"write {REPORT_FILE} and {TIMELINE_FILE} per recording under DIR (mirrored), and "
        f"the whole report as DIR/{AGGREGATE_FILE}; default: next to each recording",
    )
    parser.add_argument(
        "--no-timeline", action="store_true", help=f"do not draw {TIMELINE_FILE} (faster)"
    )


def run(args: argparse.Namespace) -> int:
    vad.require()  # fail before the first folder if silero-vad is missing
    if not args.no_timeline:
        timeline.require()
    found, failed = find_conversations(args.recordings)
    rules = TurnRules()
    done: list[Evaluated] = []
    for item in tqdm(found, unit="recording", disable=len(found) < 3, leave=False):
        try:
            conversation = load(item)
            result = evaluate(item, conversation, rules)
            write_outputs(item, conversation, result, args.out, not args.no_timeline)
        except (EvaluationError, AudioError) as exc:
            failed.append((item.path, str(exc)))
            continue
        except Exception as exc:  # an odd folder costs its own report, never the others'
            failed.append((item.path, f"unexpected {type(exc).__name__}: {exc}"))
            continue
        for warning in result.report["warnings"]:
            print(f"antiphon: warning: {warning}", file=sys.stderr)
        done.append(result)
    report: dict[str, Any] = {
        "recordings": [r.report for r in done],
        "failed": [{"path": str(path), "error": error} for path, error in failed],
        "aggregate": aggregate(done, rules),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_json(args.out / AGGREGATE_FILE, report)
    if args.json:
        print(json.dumps(report, indent=2))
    elif done:  # an empty table would only hide the error messages below it
        print(format_report(done, report["aggregate"]))
    for path, error in failed:
        print(f"antiphon: cannot evaluate {path}: {error}", file=sys.stderr)
    if not done and not failed:
        print("antiphon: nothing to evaluate", file=sys.stderr)
    return 1 if failed or not done else 0


# --- scoring ---------------------------------------------------------------------------------


def evaluate(item: Found, conversation: Conversation, rules: TurnRules) -> Evaluated:
    c = conversation
    duration = len(c.assistant) / c.sample_rate
    assistant = vad.speech_segments(c.assistant, c.sample_rate)
    user = vad.speech_segments(c.user, c.sample_rate)
    events = turns.turn_events(user, assistant, c.pieces, duration, rules)
    backchannels = turns.assistant_backchannels(assistant, c.pieces, rules)
    report: dict[str, Any] = {
        "path": str(item.path),
        "name": item.name,
        "kind": item.kind,
        "category": item.category,
        "speech": turns.speech_summary(assistant, user, duration),
        "turns": turns.summarize_turns(events),
        "assistant_backchannels": backchannels,
        "assistant_backchannels_per_min": 60 * backchannels / duration if duration else None,
        "words_from": "inner monologue" if c.pieces is not None else "none: duration rule only",
        "fdb": _fdb(item.category, assistant, user, c, duration, rules),
        "monologue": (
            monologue.monologue(c.pieces, assistant, duration, c.frame_duration, rules)
            if c.pieces is not None
            else None
        ),
        "runtime": runtime(c.frames, c.frame_duration),
        "runtime_errors": [e.get("message", "") for e in c.errors],
        "segments": {"assistant": _rounded(assistant), "user": _rounded(user)},
        "turn_events": turns.events_as_dicts(events),
        "warnings": c.warnings,
    }
    compute = [f["compute_ms"] for f in c.frames if isinstance(f.get("compute_ms"), int | float)]
    return Evaluated(item, report, events, compute)


def runtime(frames: Sequence[dict[str, Any]], frame_duration: float) -> dict[str, Any] | None:
    """The runtime's own figures from events.jsonl's frame events: the timing summary every
    recording's meta.json holds (app.core.timing), recomputed; None without frame events."""
    timings = Timings.from_events(frames)
    return timings.summary(frame_duration) if timings.frames else None


def _fdb(
    category: str | None,
    assistant: list[Segment],
    user: list[Segment],
    c: Conversation,
    duration: float,
    rules: TurnRules,
) -> dict[str, Any] | None:
    if category == fdb.PAUSE_HANDLING:
        return fdb.fdb_pause_handling(assistant, c.pieces, rules)
    if category == fdb.BACKCHANNEL:
        return fdb.fdb_backchannel(assistant, c.pieces, duration, rules)
    if category == fdb.SMOOTH_TURN_TAKING:
        user_end = c.user_end if c.user_end is not None else (user[-1][1] if user else None)
        if user_end is None:
            c.warnings.append("smooth turn-taking: no user speech found, no latency")
            return None
        return fdb.fdb_smooth_turn_taking(assistant, c.pieces, user_end, rules)
    if category == fdb.USER_INTERRUPTION:
        interruption = c.interruption
        if interruption is None:
            stretches = turns.merge(user, rules.min_pause_s)
            if not stretches:
                c.warnings.append("user interruption: no user speech found")
                return None
            interruption = stretches[-1]  # the interruption is the user's last stretch of speech
        return fdb.fdb_user_interruption(assistant, c.pieces, interruption, rules)
    return None


def aggregate(done: Sequence[Evaluated], rules: TurnRules) -> dict[str, Any]:
    speech = [r.report["speech"] for r in done]
    totals = {
        key: float(sum(s[key] for s in speech))
        for key in ("duration_s", "assistant_s", "user_s", "overlap_s", "silence_s")
    }
    events = [e for r in done for e in r.turn_events]
    by_category = {}
    for category in fdb.FDB_CATEGORIES:
        results = [
            r.report["fdb"]
            for r in done
            if r.report["category"] == category and r.report["fdb"] is not None
        ]
        if results:
            by_category[category] = fdb.summarize_fdb(category, results)
    compute = [c for r in done for c in r.compute_ms]
    monologues = [(r.report["monologue"], r.report["speech"]["duration_s"]) for r in done]
    monologues = [(m, d) for m, d in monologues if m is not None]
    with_text = sum(d for _, d in monologues)
    return {
        "recordings": len(done),
        "speech": totals,
        "turns": turns.summarize_turns(events),
        "fdb": by_category,
        "tokens_per_s": sum(m["pieces"] for m, _ in monologues) / with_text if with_text else None,
        "compute_ms": distribution(compute) if compute else None,
        "underruns": sum((r.report["runtime"] or {}).get("underruns", 0) for r in done),
    }


# --- writing ---------------------------------------------------------------------------------


def write_outputs(
    item: Found, c: Conversation, result: Evaluated, out: Path | None, draw: bool
) -> None:
    folder = item.path if out is None else out / item.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if draw:
            segments = result.report["segments"]
            title = _title(item, result.report)
            timeline.draw_timeline(
                folder / TIMELINE_FILE,
                c.assistant,
                c.user,
                c.sample_rate,
                segments["assistant"],
                segments["user"],
                c.pieces,
                title,
                _marks(result.turn_events),
            )
            result.report["timeline"] = str(folder / TIMELINE_FILE)
        result.report["report"] = str(folder / REPORT_FILE)
        _write_json(folder / REPORT_FILE, result.report)
    except OSError as exc:
        raise EvaluationError(f"cannot write the report in {folder} ({exc})") from exc


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _title(item: Found, report: dict[str, Any]) -> str:
    parts = [item.name]
    end = report["turns"][turns.END_OF_TURN]
    if end["latency_median_s"] is not None:
        parts.append(f"response latency {end['latency_median_s']:.2f} s")
    parts.append(f"overlap {report['speech']['overlap_s']:.1f} s")
    if item.category:
        parts.append(f"FDB {item.category}")
    return "   ".join(parts)


def _marks(events: Sequence[TurnEvent]) -> list[tuple[float, float, str]]:
    """Response latencies (user's end -> assistant's onset) and interruption stop latencies."""
    marks = []
    for e in events:
        if e.latency is not None and e.kind in (turns.END_OF_TURN, turns.INTERRUPTION):
            marks.append((e.user_end, e.user_end + e.latency, f"{e.latency:.2f} s"))
        if e.stop_latency is not None:
            marks.append(
                (e.user_start, e.user_start + e.stop_latency, f"stop {e.stop_latency:.2f} s")
            )
    return marks


def _rounded(segments: Sequence[Segment]) -> list[list[float]]:
    return [[round(s, 3), round(e, 3)] for s, e in segments]


# --- the readable report ---------------------------------------------------------------------


def format_report(done: Sequence[Evaluated], summary: dict[str, Any]) -> str:
    rows = [
        ["recording", "dur s", "asst s", "user s", "overlap", "answered", "latency",
         "cut in", "stop", "tok/s", "RTF"]
    ]  # fmt: skip
    for r in done:
        rep = r.report
        speech, by_kind = rep["speech"], rep["turns"]
        end, pause = by_kind[turns.END_OF_TURN], by_kind[turns.PAUSE]
        runtime, mono = rep["runtime"], rep["monologue"]
        rows.append(
            [
                rep["name"],
                f"{speech['duration_s']:.1f}",
                f"{speech['assistant_s']:.1f}",
                f"{speech['user_s']:.1f}",
                f"{speech['overlap_s']:.2f}",
                _ratio(r.turn_events, turns.END_OF_TURN),
                _seconds(end["latency_median_s"]),
                _ratio(r.turn_events, turns.PAUSE) if pause["count"] else "-",
                _seconds(by_kind[turns.INTERRUPTION]["stop_latency_median_s"]),
                f"{mono['tokens_per_s']:.1f}" if mono and mono["tokens_per_s"] is not None else "-",
                f"{runtime['real_time_factor']:.2f}" if runtime else "-",
            ]
        )
    lines = [_table(rows), ""]
    lines.append(
        "answered: ends of user turns the assistant took (spoke >= 1 s or > 3 words); latency: "
        "median from the user's end of speech; cut in: user pauses it took; stop: median time "
        "it went on speaking after a user interruption began"
    )
    totals = summary["speech"]
    lines += [
        "",
        f"all {summary['recordings']} recording(s): {totals['duration_s']:.1f} s; assistant "
        f"{totals['assistant_s']:.1f} s, user {totals['user_s']:.1f} s, overlap "
        f"{totals['overlap_s']:.2f} s",
        "",
    ]
    turn_rows = [["turn-taking", "count", "turn-over", "latency med", "latency mean", "stop med"]]
    for kind in turns.TURN_KINDS:
        entry = summary["turns"][kind]
        turn_rows.append(
            [
                kind.replace("_", " "),
                str(entry["count"]),
                _fraction(entry["turn_over_rate"]),
                _seconds(entry.get("latency_median_s")),
                _seconds(entry.get("latency_mean_s")),
                _seconds(entry.get("stop_latency_median_s")),
            ]
        )
    lines.append(_table(turn_rows))
    if summary["fdb"]:
        fdb_rows = [["Full-Duplex-Bench", "samples", "TOR", "latency mean", "other"]]
        for category, entry in summary["fdb"].items():
            other = ""
            if "backchannel_per_s_mean" in entry and entry["backchannel_per_s_mean"] is not None:
                other = f"backchannels {entry['backchannel_per_s_mean']:.3f}/s"
            if entry.get("stop_latency_median_s") is not None:
                other = f"stop median {entry['stop_latency_median_s']:.2f} s"
            fdb_rows.append(
                [
                    category,
                    str(entry["samples"]),
                    _fraction(entry["turn_over_rate"]),
                    _seconds(entry.get("latency_mean_s")),
                    other,
                ]
            )
        lines += ["", _table(fdb_rows)]
    if summary["compute_ms"] is not None:
        compute = summary["compute_ms"]
        lines += [
            "",
            f"runtime: compute per frame median {compute['median']:.1f} ms, p99 "
            f"{compute['p99']:.1f} ms, max {compute['max']:.1f} ms; underruns "
            f"{summary['underruns']}",
        ]
    return "\n".join(lines)


def _ratio(events: Sequence[TurnEvent], kind: str) -> str:
    chosen = [e for e in events if e.kind == kind]
    return f"{sum(e.took_turn for e in chosen)}/{len(chosen)}" if chosen else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
