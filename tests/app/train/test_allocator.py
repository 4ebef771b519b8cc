"""The training's large tensors on huge pages (app/train/__init__.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# a 256 MB tensor filled and freed five times; prints the page faults that took
ALLOCATE = """
import resource, sys
import app.train
import torch
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(64 << 20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(environment: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE], env=environment, capture_output=True, text=True,
        check=True, cwd=Path(__file__).parents[3],
    )  # fmt: skip
    return int(done.stdout)


@pytest.mark.skipif(
    not THP.is_file() or "[never]" in THP.read_text(), reason="no transparent huge pages here"
)
def test_importing_the_training_puts_large_tensors_on_huge_pages() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    environment["OMP_NUM_THREADS"] = "1"
    huge = _faults(environment)
    small = _faults({**environment, "THP_MEM_ALLOC_ENABLE": "0"})  # a user's own choice stands
    assert small > 5 * 65536 * 0.9  # 4 kB pages: every page of every fill faulted
    assert huge * 20 < small
