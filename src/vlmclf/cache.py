"""Where vlmclf keeps what it can recompute: converted weights, features, tokenizers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$VLMCLF_CACHE_DIR``, else ``~/.cache/vlmclf`` (read at call time, so tests can move it)."""
    return Path(os.environ.get("VLMCLF_CACHE_DIR") or Path.home() / ".cache" / "vlmclf")
