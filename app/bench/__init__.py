"""`antiphon bench`: one streaming frame timed, ours and the reference `moshi` package's
(docs/performance.md). The reference side (`reference.py`) is imported only when a comparison
is asked for."""
