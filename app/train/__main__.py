"""`python -m app.train ...`: `antiphon train ...` without the rest of the app."""

import sys

from .cli import main

sys.exit(main())
