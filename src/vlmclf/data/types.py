"""Dataset types shared by readers, methods and the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image


class BadExampleError(Exception):
    """An example that cannot be used (missing, empty, truncated or non-image file, bomb).

    Raised by ``Example.load``; the runner turns it into a failed Prediction with ``str(err)``
    as the reason and carries on.
    """


@dataclass(frozen=True)
class Example:
    """One labelled image, opened lazily: nothing is decoded until ``load()`` is called."""

    id: str
    label: int
    split: str
    source: str
    loader: Callable[[], Image.Image]
    prompt: str | None = None
    """Text that belongs to this example only (an ImageWikiQA question); None for classification."""
    key: str | None = None
    """A location-independent name for per-example seeds where ``id`` is not one (a manifest's
    absolute image path: the path relative to the data root, the manifest's folder or the
    images' common folder); None: ``id`` is location-independent already."""

    @property
    def seed_key(self) -> str:
        """What per-example random draws (the offered labels) are seeded from: the same for a
        dataset copied or moved elsewhere."""
        return self.key if self.key is not None else self.id

    def load(self) -> Image.Image:
        """Decode the image as RGB, or raise BadExampleError naming the source and the reason."""
        return self.loader()


@dataclass(frozen=True)
class Dataset:
    """Examples plus the class-name list their labels index into."""

    name: str
    split: str
    class_names: list[str]
    examples: Sequence[Example]

    def __len__(self) -> int:
        return len(self.examples)
