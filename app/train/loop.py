"""The training loop the codec and LM trainers share: seeding, the learning-rate schedule,
resumable checkpoints, the step loop with its log, bf16 autocast and the allocator tuning.

Runs are resumable, and resume to the same numbers (the command's help, app/train/cli.py,
says how); `train_loop` and the checkpoint functions are how.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import math
import random
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from app.core.files import write_atomically
from model.errors import ConfigError
from model.quantize import native_bf16_cpu

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


def read_log(path: Path) -> list[dict]:
    """A run's log.jsonl, row by row (none where it does not exist yet); a row that is not
    JSON is a ConfigError naming the file and line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {number}: not JSON ({exc.msg})") from exc
    return rows


def device_from(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device here (use --device cpu)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global generators; returns the data sampler's own generator (on the CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def learning_rate(step: int, peak: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `floor` x peak at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    data_generator: torch.Generator,
    extra: dict[str, Any] | None = None,
) -> None:
    """Everything a resumed run needs to go on exactly as if it had not stopped."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data_rng": data_generator.get_state(),
        "extra": extra or {},
    }
    # a run killed while saving keeps the previous checkpoint
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_generator: torch.Generator,
    options: str = "shape",
) -> tuple[int, dict[str, Any]]:
    """Restore a run; returns (step, extra). A checkpoint of another model (another `options`
    than the run started with, or an older antiphon) is refused with what does not fit."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(
            f"{path} does not fit this run (another {options}, or an older antiphon): "
            f"{state_dict_detail(error)}. Continue it with the options it started with, or "
            "start a new --out"
        ) from error
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    data_generator.set_state(state["data_rng"])
    return int(state["step"]), dict(state["extra"])


def resume(options: LoopOptions, extra: dict[str, Any], out: Path, start: int) -> None:
    """A run resumed at `start` from a checkpoint with this extra: the total it fixed
    (`resume_steps`), and, where it has steps left to train, the options it started with (a
    finished run may be run again with others, for its figures only)."""
    resume_steps(options, extra)
    if options.steps is None or start < options.steps:
        check_same_options(out, extra, options.learning)


def check_same_options(out: Path, extra: dict[str, Any], options: dict[str, Any]) -> None:
    """A resumed run goes on with the options it started with: with other ones it would compute
    other numbers than the run it continues, and say nothing. `--steps` (or `--minutes`) may
    change; a checkpoint that kept no options is not checked."""
    before = extra.get("options") or {}
    changed = [name for name in options if name in before and before[name] != options[name]]
    if changed:
        raise ConfigError(
            f"{out} was started with {_flags(before, changed)}; now {_flags(options, changed)}: "
            "continue it with the options it started with, or start a new --out"
        )


def _flags(values: dict[str, Any], names: list[str]) -> str:
    """`--user-noise 0.1 0.5, without --monologue-hears`, as on a command line."""
    said = []
    for name in names:
        flag, value = "--" + name.replace("_", "-"), values[name]
        if value is True:
            said.append(flag)
        elif value is False or value is None:
            said.append(f"without {flag}")
        elif isinstance(value, list):
            said.append(" ".join([flag, *map(str, value)]))
        else:
            said.append(f"{flag} {value}")
    return ", ".join(said)


def state_dict_detail(error: Exception) -> str:
    """The line of a load_state_dict error that names the keys (its first line names only the
    module), or the error's first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
    return line.rstrip(".")


def tune_allocator() -> bool:
    """Keep freed memory in the process for the next step instead of handing it back.

    glibc returns large blocks to the kernel as soon as they are freed and faults them in again
    on the next step: about 200k page faults per training step here, 40% of the step's time.
    Raising the trim threshold, the top pad and the mmap threshold stops that. It is set here,
    once the training loop starts, and not for the whole process: with the same settings from
    the start, glibc also kept every block the data preparation ever freed (24 GB for the LM's
    encoding of 1000 dialogues). Returns False where this is not glibc."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    ok &= mallopt(M_TOP_PAD, ctypes.c_int(1 << 30))
    ok &= mallopt(M_MMAP_THRESHOLD, ctypes.c_int(32 << 20))  # glibc's largest allowed value
    return bool(ok)


def memory_figures() -> dict[str, float]:
    """Peak resident memory (GB) and minor page faults so far, for the training log."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "page_faults": usage.ru_minflt}


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is faster than fp32 there: on a GPU, and on a CPU with bf16
    instructions (avx512_bf16 or AMX); on other CPUs bf16 is emulated and slower."""
    return device.type != "cpu" or native_bf16_cpu()


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast where it pays (`bf16_pays`): about 1.5x the fp32 speed for the LM on a
    CPU with bf16 instructions, losses within 1e-4 over the first steps."""
    enabled = enabled and bf16_pays(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


PROBE_STEPS = 100  # steps timed (after 10 warm-up steps) to turn --minutes into --steps


@contextmanager
def stoppable(what: str) -> Iterator[Callable[[], bool]]:
    """SIGTERM or Ctrl-C inside the block asks for a stop instead of killing the process
    mid-step: the block polls the function it gets between steps, saves where it is and
    raises KeyboardInterrupt (`stop_now`). A second signal stops at once. Outside the main
    thread (signals cannot be caught there) nothing changes, nor for a signal the process
    ignores (a job started in the background by a script ignores Ctrl-C: it still does)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def handler(signum: int, _frame: object) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        log.warning("%s: %s: stopping where the work is saved (again: at once)",
                    what, signal.Signals(signum).name)  # fmt: skip

    caught = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():  # None: a handler not set from Python
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def stop_now(what: str, where: str) -> None:
    """After a requested stop has saved its work: say how to go on, and stop (exit 130)."""
    log.warning("%s: stopped at %s; run the same command again to continue", what, where)
    raise KeyboardInterrupt


@dataclass
class LoopOptions:
    steps: int | None  # None: fixed from `minutes` after PROBE_STEPS, then kept in checkpoints
    checkpoint_every: int
    time_limit_s: float | None  # stop (with a checkpoint) after this much wall time
    minutes: float | None = None  # the whole run's budget when `steps` is None
    log_every: int = 50
    progress: bool = True
    evaluate: Callable[[int], dict[str, Any]] | None = None  # held-out figures, every eval_every
    eval_every: int = 250
    # evaluate the weights a new run starts from (another run's, `--init`): the first candidate
    # for the held-out best, so that a run that never beats them keeps them
    evaluate_first: bool = False
    # the options that change what a run learns, by argparse name, in JSON types; kept in its
    # checkpoints (`checkpoint_extra`) for `resume` to hold a resumed run to. Paths are not
    # among them: a run folder moves between machines.
    learning: dict[str, Any] = field(default_factory=dict)

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a trainer's checkpoint keeps besides the weights, for `resume`."""
        return {"steps": self.steps, "options": self.learning}

    @property
    def schedule_steps(self) -> int:
        """The length the learning-rate schedule assumes (before the probe: far away)."""
        return self.steps if self.steps is not None else 10**9


def train_loop(
    step_fn: Callable[[int], dict[str, float]],
    checkpoint: Callable[[int], None],
    start: int,
    options: LoopOptions,
    run_dir: Path,
    desc: str,
) -> int:
    """Run steps from `start` to options.steps; returns the number of steps done in total.

    With `options.steps` None, the first PROBE_STEPS steps are timed and the total is set to
    what fits in `options.minutes` (rounded down to a hundred); the trainers keep it in their
    checkpoints, so a resumed run keeps the same schedule.
    """
    began = time.monotonic()
    probe_began = began
    done = start
    bar = tqdm(
        initial=start, total=options.steps, desc=desc, unit="step", disable=not options.progress
    )
    tuned = tune_allocator()
    log.info("%s: allocator tuned for the loop: %s", desc, tuned)
    faults = memory_figures()["page_faults"]
    with open(run_dir / LOG, "a") as log_file, stoppable(desc) as stop_requested:

        def evaluate(done: int) -> None:
            assert options.evaluate is not None
            figures = options.evaluate(done)
            log_file.write(json.dumps({"step": done, "eval": figures}) + "\n")
            log_file.flush()
            log.info("%s: held-out at step %d: %s", desc, done, figures)

        if options.evaluate is not None and options.evaluate_first and start == 0:
            evaluate(0)
        step = start
        while options.steps is None or step < options.steps:
            if step == start + 10:
                probe_began = time.monotonic()
            step_began = time.monotonic()
            metrics = step_fn(step)
            done = step = step + 1
            memory = memory_figures()
            metrics["step_s"] = time.monotonic() - step_began
            metrics["faults"] = memory["page_faults"] - faults
            faults = memory["page_faults"]
            if options.steps is None and done == start + PROBE_STEPS:
                assert options.minutes is not None
                rate = (PROBE_STEPS - 10) / (time.monotonic() - probe_began)
                left = 60 * options.minutes - (time.monotonic() - began)
                options.steps = max(done, done + int(rate * left) // 100 * 100)
                bar.total = options.steps
                log.info(
                    "%s: %.1f steps/s: %d steps in %.1f min",
                    desc,
                    rate,
                    options.steps,
                    options.minutes,
                )
                log_file.write(json.dumps({"step": done, "total_steps": options.steps}) + "\n")
            bar.update()
            bar.set_postfix(
                {k: f"{v:.3g}" for k, v in metrics.items() if k not in ("faults", "step_s")},
                refresh=False,
            )
            stopping = stop_requested()
            out_of_time = stopping or (
                options.time_limit_s is not None and time.monotonic() - began > options.time_limit_s
            )
            if done % options.log_every == 0 or done == options.steps or out_of_time:
                elapsed = time.monotonic() - began
                rate = (done - start) / max(elapsed, 1e-9)
                eta = None if options.steps is None else (options.steps - done) / max(rate, 1e-9)
                row = {"step": done, **metrics, "peak_rss_gb": memory["peak_rss_gb"],
                       "elapsed_s": round(elapsed, 1),
                       "eta_s": None if eta is None else round(eta)}  # fmt: skip
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                if not options.progress:  # the log is the progress report
                    log.info(
                        "%s: step %d/%s %s, %.2f s/step, peak %.2f GB, %s left",
                        desc,
                        done,
                        options.steps,
                        " ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k != "faults"),
                        1 / max(rate, 1e-9),
                        memory["peak_rss_gb"],
                        "?" if eta is None else f"{eta / 60:.0f} min",
                    )
            if (options.evaluate is not None and not stopping
                    and (done % options.eval_every == 0 or done == options.steps)):  # fmt: skip
                evaluate(done)
            if done % options.checkpoint_every == 0 or done == options.steps or out_of_time:
                checkpoint(done)
            if stopping and done != options.steps:  # a finished run just finishes
                bar.close()
                stop_now(desc, f"step {done}")
            if out_of_time and done != options.steps:
                log.warning(
                    "%s: time limit reached at step %d of %s; run the same command again to "
                    "continue",
                    desc,
                    done,
                    options.steps,
                )
                break
    bar.close()
    return done


def resume_steps(options: LoopOptions, extra: dict[str, Any]) -> None:
    """A resumed run keeps the total it fixed (from --minutes) when it first ran."""
    if options.steps is None and extra.get("steps") is not None:
        options.steps = int(extra["steps"])


def add_loop_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumes if present)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="total steps")
    budget.add_argument(
        "--minutes",
        type=float,
        help="total steps: as many as fit in this time, measured over the first "
        f"{PROBE_STEPS} steps and kept in the checkpoint (log.jsonl and the progress bar show "
        "the number, for reproducing the run with --steps)",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS")
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="checkpoint and stop after this long; the same command continues",
    )
    parser.add_argument("--log-every", type=int, default=50, metavar="STEPS", help="to log.jsonl")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="train in fp32 (default: bf16 autocast on CUDA and on CPUs with bf16 instructions)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=250, metavar="STEPS", help="held-out figures to the log"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def loop_options(args: argparse.Namespace, learning: tuple[str, ...] = ()) -> LoopOptions:
    """The loop's options from the command line; `learning` names the trainer's options that
    a resumed run must be given as it started."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return LoopOptions(
        learning=json.loads(json.dumps({name: getattr(args, name) for name in learning})),
        steps=args.steps,
        minutes=args.minutes,
        checkpoint_every=args.checkpoint_every,
        time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
        log_every=args.log_every,
        progress=not args.no_progress,
        eval_every=args.eval_every,
    )
