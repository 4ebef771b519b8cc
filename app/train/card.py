"""`antiphon train card`: the demo model's card (MODEL_CARD.md next to its weights), written
from what the run folder recorded, so that every figure in it comes from a file with the
command that produced it beside it.

It reads: the dialogue manifests (data), the tokenizer, the codec's and the LM's log.jsonl
(steps, hours, held-out figures), `train eval`'s JSON report, `antiphon eval`'s report on the
Full-Duplex-Bench samples (optional), `antiphon bench --json` on the demo shapes (optional).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from app.core.models import ASSETS
from model.bundle import CARD_FILE, FILES, SUMMARY_PREFIX
from model.errors import ConfigError

from .dialogues import manifest_rows
from .loop import LOG, read_log
from .quality import HELD_OUT_VOICE_TARGET, TARGETS

# Full-Duplex-Bench v1 (Lin et al., arXiv 2503.04721), Table 2, Moshi's row: as published.
MOSHI_FDB: dict[str, dict[str, Any]] = {
    "pause_handling": {"turn_over_rate": (0.985, 0.980)},  # synthetic, Candor; lower is better
    "smooth_turn_taking": {"turn_over_rate": 0.941, "latency_s": 0.265},
    "user_interruption": {"turn_over_rate": 1.000, "latency_s": 0.257},
}

CAN = """\
**What it can do.** It is a demo of the whole architecture, trained from nothing on 2-core CPUs,
no GPU: it listens and speaks at once, in English, about a small closed world: greetings and
goodbyes, its name, adding, subtracting and multiplying small numbers, counting up a range,
spelling short words, yes/no facts about everyday things, and which of two numbers is larger.
It was taught to answer when you finish, to wait through a pause in the middle of a sentence
and to stop when you tell it to; how often it does each is measured below.

**What it cannot do.** Anything outside that world: it has never heard any other question,
and it will answer one with something from its own world or with silence. It has one voice
(a synthesized one), was trained only on synthesized speech, and knows no facts beyond the
fifteen it was taught. It is not a general assistant; for that, load Kyutai's released
Moshi checkpoints (`--hf-repo kyutai/moshiko-pytorch-bf16`) on a GPU."""

# The card's line that `antiphon talk` prints when it starts is SUMMARY_PREFIX + summary_line
# (read back by model.bundle.bundle_summary).
WORLD = (
    "a small demo model trained on 2-core CPUs on synthetic English speech: it listens while it "
    "speaks and answers greetings, its name, small sums, counting, spelling and yes/no facts"
)


def summary_line(report: dict | None) -> str:
    """What the model is and how often it is right, in one line, from `train eval`'s report."""
    right = (report or {}).get("figures", {}).get("answer_correct")
    if right is None:
        return f"{WORLD} (its answers not measured yet)"
    if right >= TARGETS["answer_correct"]:
        return f"{WORLD}; {right:.0%} of its answers to held-out questions are right"
    if right >= 0.5:
        return (
            f"{WORLD}; {right:.0%} of its answers to held-out questions are right, short of "
            f"the {TARGETS['answer_correct']:.0%} aimed at"
        )
    return (
        f"{WORLD}, but gets most answers wrong ({right:.0%} right on held-out questions): a "
        "work in progress; --hf-repo loads Kyutai's Moshi"
    )


def how_well(report: dict) -> str:
    """The behaviour figures of the report, as a sentence a person reads."""
    figures = report["figures"]

    def share(name: str) -> str:
        value = figures.get(name)
        return "n/a" if value is None else f"{value:.0%}"

    return (
        f"**How well.** On {report['counts']['dialogues']} held-out dialogues it answered "
        f"{share('answer_correct')} of the requests right and {share('answer_kind_right')} with "
        f"an answer of the right kind (a number for a sum, letters for a spelling); it was "
        f"silent during {share('silent_while_user')} of the user's speech, answered within 1 s "
        f"{share('answers_within_1s')} of the time, waited through a pause in the middle of a "
        f"sentence {share('pause_kept_silent')} of the time and stopped within 0.5 s when "
        f"interrupted {share('stops_within_0_5s')} of the time. The figures, per intent and "
        "for a voice it never trained on, are below."
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def run_summary(log: list[dict]) -> dict[str, Any]:
    """Steps, wall-clock hours (the log's elapsed_s restarts with each resumed process: the
    runs are summed) and the last held-out figures of one training log."""
    steps = [row for row in log if "loss" in row]
    hours, last_elapsed = 0.0, 0.0
    for row in steps:
        elapsed = float(row.get("elapsed_s", 0.0))
        if elapsed < last_elapsed:  # a new process: close the previous one
            hours += last_elapsed / 3600
        last_elapsed = elapsed
    hours += last_elapsed / 3600
    evals = [row for row in log if "eval" in row]
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "hours": hours,
        "step_s": sorted(r["step_s"] for r in steps)[len(steps) // 2] if steps else None,
        "peak_rss_gb": max((r.get("peak_rss_gb", 0) for r in steps), default=None),
        "last_eval": evals[-1] if evals else None,
        "evals": evals,
    }


def _shown(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(value: float | None, target: float) -> str:
    return "" if value is None else ("met" if value >= target else "**below**")


def quality_table(report: dict) -> list[str]:
    figures, held = report["figures"], report.get("held_out_voice", {})
    lines = [
        "| figure | all held-out dialogues | held-out voice | target | |",
        "|---|---|---|---|---|",
    ]
    for name, value in figures.items():
        target = TARGETS.get(name)
        if name == "answer_correct":
            target_text = f">= {target:.2f} (>= {HELD_OUT_VOICE_TARGET:.2f} held-out voice)"
            verdict = _verdict(value, target or 0)
            if held.get(name) is not None and held[name] < HELD_OUT_VOICE_TARGET:
                verdict = "**below** (held-out voice)"
        elif name == "codec_stoi":  # the target is for the held-out voice
            target_text = f">= {target:.2f} (held-out voice)" if target else ""
            verdict = _verdict(held.get(name), target) if target else ""
        else:
            target_text = f">= {target:.2f}" if target else ""
            verdict = _verdict(value, target) if target else ""
        lines.append(
            f"| {name} | {_shown(value)} | {_shown(held.get(name))} | {target_text} | {verdict} |"
        )
    lines += [
        "",
        "| intent | requests | answer correct | answer of the right kind | audio says the text |",
        "|---|---|---|---|---|",
    ]
    for intent, row in report.get("per_intent", {}).items():
        lines.append(
            f"| {intent} | {row['requests']} | {_shown(row['answer_correct'])} | "
            f"{_shown(row.get('answer_kind_right'))} | {_shown(row['audio_says_text'])} |"
        )
    return lines


def fdb_table(report: dict) -> list[str]:
    fdb = report.get("aggregate", {}).get("fdb", {})
    lines = [
        "| category | samples | TOR (this model) | TOR (Moshi, published) | latency s (this "
        "model) | latency s (Moshi, published) |",
        "|---|---|---|---|---|---|",
    ]
    for category, published in MOSHI_FDB.items():
        ours = fdb.get(category)
        if ours is None:
            continue
        tor = published["turn_over_rate"]
        tor_text = " / ".join(f"{t:.3f}" for t in tor) if isinstance(tor, tuple) else f"{tor:.3f}"
        latency = ours.get("latency_mean_s")
        lines.append(
            f"| {category} | {ours['samples']} | {_shown(ours.get('turn_over_rate'))} | "
            f"{tor_text} | {_shown(latency)} | {_shown(published.get('latency_s'))} |"
        )
    stops = fdb.get("user_interruption", {})
    if stops.get("stop_latency_median_s") is not None:
        lines += [
            "",
            "Stop latency (how long it kept speaking after the user cut in): median "
            f"{_shown(stops['stop_latency_median_s'], 2)} s, mean "
            f"{_shown(stops['stop_latency_mean_s'], 2)} s.",
        ]
    return lines


RUN_LOGS = {"codec": "codec", "lm": "lm", "hear": "lm-hear", "decoder": "codec-decoder"}


def training_table(run: Path, logs: dict[str, dict], commands: dict[str, str]) -> list[str]:
    """How the model was trained, from the run folder's logs (`RUN_LOGS`, each summarised by
    `run_summary`): one row per stage."""
    folders = [run / "data" / "train"]  # and data/train2 where the run made more
    if (run / "data" / "train2" / "manifest.jsonl").is_file():
        folders.append(run / "data" / "train2")
    manifest = [row for folder in folders for row in manifest_rows(folder)]
    train_hours = sum(row["duration"] for row in manifest) / 3600
    codec, lm, hear, decoder = (logs[name] for name in RUN_LOGS)
    return [
        f"On one machine: {platform.processor() or platform.machine()}, 2 CPU cores, no GPU; "
        "every stage by `scripts/train_demo.sh` (seed 0), resumable.",
        "",
        "| stage | what | steps | wall-clock | command |",
        "|---|---|---|---|---|",
        f"| data | {len(manifest)} synthetic dialogues, {train_hours:.1f} h of two-channel audio "
        f"| | {commands.get('data', '')} | `antiphon train data` |",
        f"| codec | Mimi architecture, 2.6 M parameters | {codec['steps']} | "
        f"{codec['hours']:.2f} h ({_shown(codec['step_s'], 2)} s/step, peak "
        f"{_shown(codec['peak_rss_gb'], 2)} GB) | `antiphon train codec` |",
        *(
            [
                f"| codec decoder | its decoder side only (codes unchanged) | {decoder['steps']} "
                f"| {decoder['hours']:.2f} h ({_shown(decoder['step_s'], 2)} s/step) | "
                "`antiphon train codec --decoder-only` |"
            ]
            if decoder["steps"]
            else []
        ),
        f"| LM | Moshi architecture, 11 M parameters | {lm['steps']} | {lm['hours']:.2f} h "
        f"({_shown(lm['step_s'], 2)} s/step, peak {_shown(lm['peak_rss_gb'], 2)} GB) | "
        "`antiphon train lm` |",
        *(
            [
                f"| LM, hearing | from the LM above, with the training-only head that writes "
                f"down the user's words | {hear['steps']} | {hear['hours']:.2f} h "
                f"({_shown(hear['step_s'], 2)} s/step) | `antiphon train lm --init` |"
            ]
            if hear["steps"]
            else []
        ),
        "",
    ]


def write_card(
    run: Path, assets: Path, commands: dict[str, str], lineage: str | None = None
) -> str:
    """MODEL_CARD.md's text. `lineage`: how the model was trained, written by hand, for one
    trained over several runs (each from the last one's weights) whose folders are not all
    there; without it the table comes from the run folder's logs."""
    logs = {name: run_summary(read_log(run / folder / LOG)) for name, folder in RUN_LOGS.items()}
    codec, lm, hear, decoder = (logs[name] for name in RUN_LOGS)
    report = _read_json(run / "eval.json")
    fdb = _read_json(run / "fdb-eval" / "report.json")
    bench = _read_json(run / "bench.json")
    sizes = {name: (assets / name).stat().st_size for name in FILES if (assets / name).is_file()}

    out = ["# antiphon demo model", "", SUMMARY_PREFIX + summary_line(report) + ".", "", CAN, ""]
    if report:
        out += [how_well(report), ""]
    out += ["## How it was trained", ""]
    out += [lineage.strip(), ""] if lineage else training_table(run, logs, commands)
    out += [
        "Shipped files: "
        + ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in sizes.items())
        + f"; {sum(sizes.values()) / 1e6:.1f} MB in all.",
        "",
    ]
    for name, summary in (("LM", lm), ("LM, hearing", hear)):
        if summary["last_eval"]:
            out += [f"{name} held-out figures (teacher-forced) at step "
                    f"{summary['last_eval']['step']}: "
                    f"`{json.dumps(summary['last_eval']['eval'])}`", ""]  # fmt: skip
    for name, summary in (("Codec", codec), ("Codec decoder", decoder)):
        if summary["last_eval"]:
            out += [f"{name} held-out figures (user channel as heard: STOI, codes used per "
                    f"codebook) at step {summary['last_eval']['step']}: "
                    f"`{json.dumps(summary['last_eval']['eval'])}`", ""]  # fmt: skip
    out += ["## Measured quality", ""]
    if report:
        counts = report["counts"]
        out += [
            f"`antiphon train eval` on {counts['dialogues']} held-out dialogues "
            f"({counts['held_out_voice_dialogues']} with the held-out voice, a speaker no "
            f"training dialogue has; held-out phrasings, numbers and word pairs): "
            f"{counts['requests_answered']} answered requests, "
            f"{counts['interruptions_while_speaking']} interruptions while speaking. Median "
            f"answer latency {_shown(report.get('median_latency_s'), 2)} s.",
            "",
            *quality_table(report),
            "",
            f"Command: `{commands.get('eval', 'antiphon train eval')}`",
            "",
        ]
    else:
        out += ["(no `train eval` report in the run folder)", ""]
    if fdb:
        out += [
            "## Full-Duplex-Bench-style figures",
            "",
            "Each held-out request cut into one Full-Duplex-Bench v1 sample "
            "(`train eval --fdb-out`, app/train/fdbsets.py) and scored by `antiphon eval`, "
            "beside Moshi's published figures (Full-Duplex-Bench v1, Lin et al. 2025, "
            "arXiv 2503.04721, Table 2; their samples are real and synthetic human speech, "
            "ours are this demo's held-out dialogues, so the comparison is of behaviour, not "
            "of the same test). Pause handling: lower TOR is better; Moshi's two figures are "
            "the synthetic and Candor sets. Our interruptions tell the assistant to stop, so "
            "TOR after them has no right value; the stop latency is the figure.",
            "",
            *fdb_table(fdb),
            "",
            f"Command: `{commands.get('fdb', 'antiphon eval')}`",
            "",
        ]
    if bench:
        row = bench["results"][0]
        out += [
            "## Speed",
            "",
            f"Frame compute, batch 1, {bench.get('threads', 2)} threads: median "
            f"{row['ours']['frame']['median_ms']:.1f} ms, p99 {row['ours']['frame']['p99_ms']:.1f}"
            " ms (real time needs under 80 ms).",
            "",
            f"Command: `antiphon bench --lm demo --codec demo --threads {bench.get('threads', 2)} "
            f"--no-reference --frames 200 --json {run}/bench.json` (the demo's shapes)",
            "",
        ]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="the run folder (RUN_DIR)")
    parser.add_argument("--assets", type=Path, default=ASSETS, help="where the weights are")
    parser.add_argument(
        "--data-time", default="", help="wall-clock of the data stage, as the log printed it"
    )
    parser.add_argument(
        "--lineage",
        type=Path,
        help="how the model was trained, in Markdown, written by hand: for a model trained "
        "over several runs, each from the last one's weights (trained/LINEAGE.md); replaces "
        "the table made from the run folder's logs",
    )


def run(args: argparse.Namespace) -> int:
    manifest = args.run / "data" / "train" / "manifest.jsonl"
    lineage = None
    if args.lineage is not None:
        try:
            lineage = args.lineage.read_text()
        except OSError as exc:
            raise ConfigError(f"--lineage {args.lineage}: cannot read it ({exc})") from exc
    elif not manifest.is_file():
        raise ConfigError(
            f"--run {args.run}: no {manifest.relative_to(args.run)}; give the run folder "
            "scripts/train_demo.sh wrote (RUN_DIR)"
        )
    if not args.assets.is_dir():
        raise ConfigError(f"--assets {args.assets}: no such folder; run `train export` first")
    report = _read_json(args.run / "eval.json")
    count = f" --count {report['counts']['dialogues']}" if report else ""
    commands = {
        "data": args.data_time,
        "eval": f"antiphon train eval --assets {args.assets} --data {args.run}/data/eval{count} "
        f"--json {args.run}/eval.json --fdb-out {args.run}/fdb",
        "fdb": f"antiphon eval {args.run}/fdb --out {args.run}/fdb-eval --no-timeline",
    }
    (args.assets / CARD_FILE).write_text(write_card(args.run, args.assets, commands, lineage))
    print(f"wrote {args.assets / CARD_FILE}")
    return 0
