"""`antiphon serve` on a machine too slow for its model: every batched step takes at least as
many seconds as DELAY_FILE says (read at each step, so a test can slow the node down and let it
recover). The fault is injected; everything else is the product's own `serve`.

    python tests/faults/slow_node.py DELAY_FILE serve --broker mqtt://... [serve options]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.cli import main  # noqa: E402
from app.core.engine import BatchEngine  # noqa: E402

delay_file = Path(sys.argv[1])
step = BatchEngine.step


def slow_step(self: BatchEngine, frames: Any) -> Any:
    started = time.perf_counter()
    result = step(self, frames)
    delay = float(delay_file.read_text() or 0)
    time.sleep(max(0.0, delay - (time.perf_counter() - started)))
    return result


BatchEngine.step = slow_step  # type: ignore[method-assign]
sys.exit(main(sys.argv[2:]))
