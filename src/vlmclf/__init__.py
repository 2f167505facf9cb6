"""vlmclf: evaluate vision-language models as image classifiers, side by side with CLIP.

The Python API (``vlmclf.evaluate``, ``load_model``, ``load_dataset``, ``open_store``,
``Result``, ``CommandError``) lives in ``vlmclf.api`` and is loaded on first use, so that
``import vlmclf`` stays light and this bottom layer imports nothing of ours when it loads.
"""

from typing import Any

__version__ = "0.1.0"

API_NAMES = ("evaluate", "load_model", "load_dataset", "open_store", "Result", "CommandError")


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        import importlib

        return getattr(importlib.import_module("vlmclf.api"), name)
    raise AttributeError(f"module 'vlmclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API_NAMES])
