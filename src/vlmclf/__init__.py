"""vlmclf: evaluate vision-language models as image classifiers, side by side with CLIP.

The Python API (``vlmclf.evaluate``, ``load_model``, ``load_dataset``, ``open_store``,
``Result``, ``CommandError``) lives in ``vlmclf.api`` and is loaded on first use, so that
``import vlmclf`` stays light and this bottom layer imports nothing of ours when it loads.
``dir(vlmclf)`` lists the API and ``__version__``, nothing of this module's machinery.
"""

from typing import Any as _Any  # private: the module's own names stay out of dir(vlmclf)

__version__ = "0.1.0"

__all__ = ["evaluate", "load_model", "load_dataset", "open_store", "Result", "CommandError"]


def __getattr__(name: str) -> _Any:
    """An API name, imported from ``vlmclf.api`` when first asked for."""
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("vlmclf.api"), name)
    raise AttributeError(f"module 'vlmclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names only (what ``__all__`` lists, and ``__version__``)."""
    return sorted([*__all__, "__version__"])
