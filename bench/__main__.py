"""python -m bench run [--quick | --smoke] [--runs N] [--scenarios ...] [--configs ...] [--profile]"""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
