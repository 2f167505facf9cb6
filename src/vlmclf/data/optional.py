"""Optional readers' packages: a one-line error naming the extra when one is missing."""

from __future__ import annotations

import importlib.util

HF_PREFIX = "hf-dataset:"
WDS_PREFIX = "wds:"


def require_extra(module: str, prefix: str, extra: str) -> None:
    """Raise ValueError (one line) unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"{prefix} datasets need the {module!r} package: pip install 'vlmclf[{extra}]'"
        )
