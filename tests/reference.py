"""The reference `moshi` package, a test-only oracle: tests that need it skip without it.

`bash scripts/setup.sh --dev` installs it (moshi 0.2.13, --no-deps). Tests marked `parity` skip
before they start (tests/conftest.py); helpers that build a reference model call
`require_reference()` first, so a test that needs one through a fixture skips too.
"""

from __future__ import annotations

import pytest

MISSING = (
    "the reference `moshi` package is not installed (parity tests compare against it; "
    "bash scripts/setup.sh --dev installs it)"
)


def require_reference() -> None:
    """Skip the calling test unless the reference package imports."""
    pytest.importorskip("moshi", reason=MISSING, exc_type=ImportError)  # broken counts as missing
