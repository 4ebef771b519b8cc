"""Files: written so that a killed process never leaves one half-written, and the files that one
front door writes and another reads.

- `write_atomically(path, write)`: `write` fills a temporary file beside `path`, which then
  replaces `path` in one step (os.replace): readers see the old file or the new one, never a
  part. Recordings' meta.json, the hash cache, `run`'s outputs and training checkpoints.
- The inner monologue as text, OUT.text.tsv (and what a hearing model wrote down of the user,
  OUT.heard.tsv): `antiphon run` writes them, `antiphon eval` reads the first (TEXT_FORMAT).
- Full-Duplex-Bench's folder layout: input.wav (the user) and output.wav (the assistant), same
  length, time-aligned (`run --fdb`, `train eval --fdb-out`, recordings exported, `eval`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .events import HeardEvent, TextEvent

FDB_INPUT = "input.wav"
FDB_OUTPUT = "output.wav"
# Full-Duplex-Bench v1's four categories, named as its folders and evaluation scripts name them
PAUSE_HANDLING = "pause_handling"
BACKCHANNEL = "backchannel"
SMOOTH_TURN_TAKING = "smooth_turn_taking"
USER_INTERRUPTION = "user_interruption"
FDB_CATEGORIES = (PAUSE_HANDLING, BACKCHANNEL, SMOOTH_TURN_TAKING, USER_INTERRUPTION)
TEXT_SUFFIX = ".text.tsv"
HEARD_SUFFIX = ".heard.tsv"
TEXT_HEADER = ("start_s", "frame", "token", "text")
_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
TEXT_FORMAT = """\
text file (OUT.text.tsv, output.text.tsv): tab-separated, a header line, then one row per piece
of the inner monologue as it became readable:

    start_s  frame  token  text
    1.040    13     2992    Hello

  start_s  start of the frame in which the model emitted it (frame * 0.08 s), on the WAVs' clock
  text     the new text (a word start begins with a space, so the column joined is the whole
           monologue); <id> for a model without tokenizer; tab, newline, CR and backslash are
           written as \\t, \\n, \\r and \\\\ (app.core.files.read_text reads it back)

A model whose monologue also writes down what it hears of the user (`antiphon train lm
--monologue-hears`) gets those pieces in OUT.heard.tsv, in the same form.
"""


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes a temporary file in `path`'s folder (with `path`'s suffix, so that
    writers that choose a format by it still can), which then replaces `path`."""
    path = Path(path)
    unique = f"{os.getpid()}-{threading.get_ident()}"  # several writers of one file never clash
    tmp = path.with_name(f".{path.stem}.{unique}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON, atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def text_path(output: Path) -> Path:
    """The inner monologue's file beside an output WAV: OUT.wav -> OUT.text.tsv."""
    return output.with_suffix(TEXT_SUFFIX)


def heard_path(output: Path) -> Path:
    """What the model wrote down of the user's words, beside an output WAV: OUT.heard.tsv."""
    return output.with_suffix(HEARD_SUFFIX)


def write_text(path: Path, pieces: Sequence[TextEvent | HeardEvent]) -> None:
    rows = ["\t".join(TEXT_HEADER)]
    rows += [f"{p.time:.3f}\t{p.frame}\t{p.token}\t{p.text.translate(_ESCAPES)}" for p in pieces]
    write_atomically(path, lambda tmp: tmp.write_bytes(("\n".join(rows) + "\n").encode("utf-8")))


def read_text(path: str | Path) -> list[tuple[float, int, int, str]]:
    """A text file (TEXT_FORMAT) back as (start_s, frame, token, text) rows."""
    unescape = {value: key for key, value in _ESCAPES.items()}

    def text(escaped: str) -> str:
        return re.sub(r"\\[\\tnr]", lambda m: chr(unescape[m.group()]), escaped)

    lines = Path(path).read_bytes().decode("utf-8").split("\n")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        row = line.split("\t")
        if len(row) != len(TEXT_HEADER):
            raise ValueError(
                f"{path}, line {number}: {len(row)} columns, not the {len(TEXT_HEADER)} of "
                f"{'/'.join(TEXT_HEADER)}"
            )
        rows.append((float(row[0]), int(row[1]), int(row[2]), text(row[3])))
    return rows
