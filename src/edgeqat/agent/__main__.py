"""``python -m edgeqat.agent``: the device agent without the full ``edgeqat`` CLI (and its imports)."""

import sys

from edgeqat.agent.cli import main

sys.exit(main())
