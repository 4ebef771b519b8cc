"""`python -m app.serve ...`: `antiphon serve ...` (scripts/load_serve.py starts nodes so)."""

import sys

from .cli import main

sys.exit(main())
