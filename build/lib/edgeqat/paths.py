"""Where edgeqat keeps local state (caches), overridable for tests and shared machines."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGEQAT_CACHE_DIR`` or ``~/.cache/edgeqat``."""
    return Path(os.environ.get("EDGEQAT_CACHE_DIR", Path.home() / ".cache" / "edgeqat"))
