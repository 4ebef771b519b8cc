"""Test-wide setup."""

import os

# The reference `moshi` package (a test-only oracle) compiles a few functions lazily with
# torch.compile; that is slow and pointless for CPU parity tests.
os.environ.setdefault("NO_TORCH_COMPILE", "1")
