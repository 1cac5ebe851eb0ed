"""``python -m runner.cli``."""
from __future__ import annotations

import sys

from runner.cli.main import main

sys.exit(main())
