"""Prices for estimating what a run costs, in USD per 1M input / output tokens.

These are the providers' public list prices as far as this file's author knew them (early 2025,
standard tier, short prompts, no batch or cache discounts). Prices change: override or extend
them with a JSON file (``--price-file``) of the form
``{"gpt-4o": {"input": 2.5, "output": 10.0}, ...}``. A model with no price gets a cost of None,
never 0, so a report cannot pass off an unknown cost as free.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # model: (input, output), USD per 1M tokens
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4.1": (2.00, 8.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-sonnet": (3.00, 15.00),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-2.0-flash": (0.10, 0.40),
}

# A dated or versioned snapshot costs what its family costs ("gpt-4o-2024-08-06",
# "claude-3-5-sonnet-20241022", "gemini-1.5-pro-002", "claude-3-opus-latest"); any other suffix
# is a different model ("gpt-4.1-mini" is not "gpt-4.1") and gets no price.
_SNAPSHOT_SUFFIX = re.compile(r"^(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{3}|-latest)$")


@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_m + output_tokens * self.output_per_m) / 1e6


class PriceTable:
    """Model name -> Price, with snapshot names resolved to their family."""

    def __init__(self, prices: dict[str, Price]):
        self.prices = dict(prices)

    @classmethod
    def default(cls) -> PriceTable:
        return cls({name: Price(*pair) for name, pair in DEFAULT_PRICES.items()})

    @classmethod
    def load(cls, price_file: str | Path | None) -> PriceTable:
        """The default table, overridden entry by entry by ``price_file`` when given."""
        table = cls.default()
        if price_file is not None:
            table.prices.update(read_price_file(price_file))
        return table

    def lookup(self, model: str) -> Price | None:
        name = model.removeprefix("models/")  # Gemini's resource names
        if name in self.prices:
            return self.prices[name]
        for family in sorted(self.prices, key=len, reverse=True):
            if name.startswith(family) and _SNAPSHOT_SUFFIX.match(name[len(family):]):
                return self.prices[family]
        return None


def read_price_file(path: str | Path) -> dict[str, Price]:
    """Parse a price override file, naming the file and the entry that is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"price file {path}: cannot read it: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"price file {path}: line {err.lineno}: not JSON: {err.msg}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"price file {path}: expected an object of model -> "
                         '{"input": ..., "output": ...}')
    prices: dict[str, Price] = {}
    for model, entry in raw.items():
        prices[model] = _parse_entry(path, model, entry)
    return prices


def _parse_entry(path: Path, model: str, entry: object) -> Price:
    if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
        raise ValueError(f'price file {path}: entry "{model}" must be '
                         '{"input": <USD per 1M tokens>, "output": <USD per 1M tokens>}')
    values = []
    for side in ("input", "output"):
        value = entry[side]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value < 0:
            raise ValueError(f'price file {path}: entry "{model}" field "{side}" must be a '
                             f"non-negative number, got {value!r}")
        values.append(float(value))
    return Price(*values)
