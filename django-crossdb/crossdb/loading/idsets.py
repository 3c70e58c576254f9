"""Sets of ids to test whole arrays of references against (the loader's fast path)."""

from collections.abc import Collection
from typing import Any

import numpy as np


def within(column: np.ndarray, low: int, high: int) -> bool:
    """Whether every value of column lies in [low, high]."""
    return not len(column) or bool(column.min() >= low and column.max() <= high)


class IdSet:
    """Ids to test whole arrays against: a lookup table when they are dense enough (one
    byte per id in their span, up to ``TABLE_SPAN``), else a sorted array (a binary
    search per value, about 30 times slower at 100,000 ids)."""

    TABLE_SPAN = 1 << 24

    def __init__(self, ids: Collection[int]) -> None:
        self.ids = np.sort(np.fromiter(ids, np.int64, len(ids)))
        self.table: np.ndarray | None = None
        if len(self.ids) and self.ids[-1] - self.ids[0] < self.TABLE_SPAN:
            self.low = self.ids[0]
            self.table = np.zeros(self.ids[-1] - self.low + 1, dtype=bool)
            self.table[self.ids - self.low] = True

    def __len__(self) -> int:
        return len(self.ids)

    def contains(self, values: np.ndarray) -> Any:
        """Whether each of values is one of the ids."""
        if not len(self.ids):
            return np.zeros(len(values), dtype=bool)
        if self.table is not None:
            offsets = values - self.low
            inside = (offsets >= 0) & (offsets < len(self.table))
            found = np.zeros(len(values), dtype=bool)
            found[inside] = self.table[offsets[inside]]
            return found
        at = np.minimum(np.searchsorted(self.ids, values), len(self.ids) - 1)
        return self.ids[at] == values
