"""How many examples go to the model at once: ``--batch-size auto`` and the out-of-memory search.

The batch size never changes what a prediction is (it is in neither the RunSpec nor the
identity), so the runner may change it at any time. On CPU ``auto`` is the command's fixed
default; on a CUDA device it is a cap that the search starts from. An out-of-memory error
marks a size as too large; the next size is the midpoint between the largest size that
worked and the smallest that did not (half of the failed size while none has worked), so the
search settles on the largest size that fits, in a handful of tries, whatever the cap.
"""

from __future__ import annotations

from vlmclf.methods.base import LoadedExample, Method
from vlmclf.records import Prediction

AUTO = "auto"
CUDA_AUTO_BATCH = 128
"""The first size ``--batch-size auto`` tries on CUDA, and the number of images decoded per
batch ahead of the model (the search only goes down from it)."""


def parse_batch_size(value: str) -> str:
    """``auto`` or a whole number >= 1, as typed (a command-line callback raises on others)."""
    text = value.strip().lower()
    if text == AUTO:
        return AUTO
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number >= 1 or auto, got {value!r}") from None
    if number < 1:
        raise ValueError(f"must be >= 1, got {number}")
    return str(number)


def resolve_batch_size(requested: str | int, device: str, cpu_default: int) -> int:
    """The batch size a run starts from: a number as given; ``auto`` is ``cpu_default`` off
    CUDA (CPU and MPS, where the command's fixed size of before stays) and
    ``CUDA_AUTO_BATCH`` on CUDA, where out-of-memory errors narrow it down to what fits."""
    if isinstance(requested, int):
        return requested
    parsed = parse_batch_size(requested)
    if parsed != AUTO:
        return int(parsed)
    return CUDA_AUTO_BATCH if device.startswith("cuda") else cpu_default


class BatchSizer:
    """The largest batch that fits: starts at the configured size, searches down on
    out-of-memory and back up between the sizes known to fit and known not to."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.fits = 0  # the largest size that ran (0: none yet)
        self.too_large: int | None = None  # the smallest size that ran out of memory

    def out_of_memory(self, failed_size: int) -> bool:
        """Shrink below ``failed_size``; False when one example alone did not fit."""
        if failed_size <= 1:
            return False
        self.too_large = failed_size if self.too_large is None else min(self.too_large, failed_size)
        if self.fits >= failed_size:  # memory use varies between batches: forget the success
            self.fits = 0
        self.size = self._between() if self.fits else max(1, failed_size // 2)
        return True

    def succeeded(self, size: int) -> None:
        """A chunk of ``size`` examples ran: try the midpoint towards the smallest failure."""
        self.fits = max(self.fits, size)
        if self.too_large is not None and size == self.size:
            self.size = self._between()

    def _between(self) -> int:
        assert self.too_large is not None
        return max(self.fits, (self.fits + self.too_large) // 2, 1)


def is_out_of_memory(err: BaseException) -> bool:
    """An accelerator's out-of-memory error: ``torch.OutOfMemoryError`` (torch 2.5 and later;
    ``torch.cuda.OutOfMemoryError`` is the same class), else CUDA's own on torch 2.4."""
    import torch

    return isinstance(err, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def _is_run_stopping(err: BaseException) -> bool:
    """Errors that say every further call is pointless (bad key, spent budget, unsupported)."""
    from vlmclf.models.api.errors import ApiError

    return isinstance(err, (ApiError, NotImplementedError))


def predict_with_fallback(
    method: Method, loaded: list[LoadedExample], sizer: BatchSizer
) -> list[Prediction]:
    """``method.predict`` in chunks of ``sizer.size``, in order; out-of-memory shrinks the chunk
    and tries it again, and what still fails (out-of-memory at one example, a model runtime
    error) is transient: stored, not done, retried by the next run."""
    out: list[Prediction] = []
    start = 0
    while start < len(loaded):
        chunk = loaded[start : start + sizer.size]
        try:
            out.extend(method.predict(chunk))
            sizer.succeeded(len(chunk))
        except RuntimeError as err:
            if _is_run_stopping(err):
                raise
            if is_out_of_memory(err):
                free_accelerator_memory()
                if sizer.out_of_memory(len(chunk)):
                    continue
                reason = f"out of memory at batch size 1: {err}"
            else:
                reason = f"model runtime error: {type(err).__name__}: {err}"
            out.extend(Prediction.transient(i.example.id, i.example.label, reason) for i in chunk)
        start += len(chunk)
    return out


def free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
