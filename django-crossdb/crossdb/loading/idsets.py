"""Sets of ids to test whole arrays of references against (the loader's fast path), and
the accepted ids of a run's parent tables, kept at most 16 bytes an id when they are whole
numbers (``AcceptedIds``)."""

from collections.abc import Collection
from typing import Any

import numpy as np


def within(column: np.ndarray, low: int, high: int) -> bool:
    """Whether every value of column lies in [low, high]."""
    return not len(column) or bool(column.min() >= low and column.max() <= high)


class IdSet:
    """Ids to test whole arrays against: a bitmap over their span when they are dense enough
    (one bit per value of the span, at most 8 bytes an id and ``TABLE_SPAN`` bits), else
    the sorted array alone (a binary search per value, about 30 times slower at 100,000
    ids)."""

    TABLE_SPAN = 1 << 27  # 16 MB of bitmap
    BITS_PER_ID = 64  # the bitmap's span may be this many values an id (8 bytes)
    BUILD_CHUNK = 1 << 18

    def __init__(self, ids: Collection[int]) -> None:
        self._build(_sorted_unique(np.fromiter(ids, np.int64, len(ids))))

    @classmethod
    def of_sorted(cls, ids: np.ndarray) -> "IdSet":
        """An IdSet over ids, sorted and unique already, without a copy of them."""
        idset = cls.__new__(cls)
        idset._build(ids)
        return idset

    def _build(self, ids: np.ndarray) -> None:
        self.ids = ids
        self.bitmap: np.ndarray | None = None
        if not len(ids):
            return
        span = int(ids[-1]) - int(ids[0]) + 1
        if span <= min(self.TABLE_SPAN, self.BITS_PER_ID * len(ids)):
            self.low = int(ids[0])
            self.span = span
            self.bitmap = np.zeros((span + 7) >> 3, dtype=np.uint8)
            # a chunk of ids at a time, bit by bit: the offsets of every id at once, or a
            # bool per value of the span, would cost several times the ids for a moment
            for start in range(0, len(ids), self.BUILD_CHUNK):
                offsets = ids[start : start + self.BUILD_CHUNK] - self.low
                bits = np.left_shift(1, (offsets & 7).astype(np.uint8), dtype=np.uint8)
                np.bitwise_or.at(self.bitmap, offsets >> 3, bits)

    def __len__(self) -> int:
        return len(self.ids)

    def contains(self, values: np.ndarray) -> Any:
        """Whether each of values is one of the ids."""
        if not len(self.ids):
            return np.zeros(len(values), dtype=bool)
        if self.bitmap is not None:
            offsets = values - self.low
            inside = (offsets >= 0) & (offsets < self.span)
            found = np.zeros(len(values), dtype=bool)
            at = offsets[inside]
            found[inside] = (self.bitmap[at >> 3] >> (at & 7).astype(np.uint8)) & 1
            return found
        return _member(self.ids, values)


class AcceptedIds:
    """The ids of a parent table a run has accepted: what its children are checked against.

    This is what must grow with the parents (a child may name any of them), so it is kept
    small: whole-number ids as one sorted array of int64 (8 bytes an id) with the newest
    additions beside it, merged in once they reach a quarter of it (each merge copies the
    array once, so adding n ids costs O(n log n) and the copy never exceeds twice the ids);
    ids of other types (UUIDs, text) in a Python set, about 60 bytes an id plus the ids.
    A Python set of whole numbers took about 70 bytes an id.
    """

    MERGE_AT = 1 << 16  # additions kept apart before a merge, at least
    idset_class = IdSet

    def __init__(self, whole_numbers: bool) -> None:
        self.whole_numbers = whole_numbers
        self._sorted = np.empty(0, np.int64)
        self._recent: list[np.ndarray] = []
        self._recent_count = 0
        self._set: set[Any] = set()
        self._idset: IdSet | None = None

    def add(self, ids: Any) -> None:
        """Remember ids: a sequence or an array of the table's primary keys."""
        if not len(ids):
            return
        self._idset = None
        if not self.whole_numbers:
            self._set.update(ids)
            return
        added = _sorted_unique(np.array(ids, dtype=np.int64))
        self._recent.append(added)
        self._recent_count += len(added)
        if self._recent_count >= max(self.MERGE_AT, len(self._sorted) // 4):
            self._merge()

    def _merge(self) -> None:
        """Merge the recent additions into the sorted array, growing it in place where no
        IdSet still shares it (a large block grows without a copy), so a merge needs little
        more than the ids it adds."""
        if not self._recent:
            return
        added = _sorted_unique(np.concatenate(self._recent))
        self._recent, self._recent_count = [], 0
        held = len(self._sorted)
        if held:
            added = added[~_member(self._sorted, added)]
        if not len(added):
            return
        try:
            self._sorted.resize(held + len(added))  # refuses while another array shares it
        except ValueError:
            self._sorted = np.concatenate([self._sorted, added])
        else:
            self._sorted[held:] = added
        self._sorted.sort(kind="stable")  # two sorted runs: one merge

    def __len__(self) -> int:
        if not self.whole_numbers:
            return len(self._set)
        self._merge()
        return len(self._sorted)

    def __contains__(self, pk: Any) -> bool:
        if not self.whole_numbers:
            return pk in self._set
        if not isinstance(pk, int) or not -(1 << 63) <= pk < 1 << 63:
            return False
        # no merge: a rejected row asks this of its own table's ids while they still grow
        return any(_member(ids, pk) for ids in (self._sorted, *self._recent) if len(ids))

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Whether each of values (an int64 array) is one of the ids (whole numbers only)."""
        return self.idset().contains(values)

    def idset(self) -> IdSet:
        """The ids as an ``IdSet`` over the one sorted array (built once per growth)."""
        if self._idset is None:
            self._merge()
            self._idset = self.idset_class.of_sorted(self._sorted)
        return self._idset

    def unknown(self, named: Any) -> list[int]:
        """The indexes, among named (a sequence of ids), of those not among the ids."""
        if not self.whole_numbers:
            found = self._set
            if found.issuperset(named):
                return []
            return [i for i, pk in enumerate(named) if pk not in found]
        values = _as_int64(named)
        if values is None:  # a value no 64-bit whole number: it cannot be one of them
            return [i for i, pk in enumerate(named) if pk not in self]
        return np.flatnonzero(~self.contains(values)).tolist()

    def difference(self, ids: Any) -> set[Any]:
        """The ids, among ids, that are not among these."""
        return {pk for pk in ids if pk not in self} if self.whole_numbers else set(ids) - self._set


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """values sorted, each once; sorts in place (numpy's ``unique`` hashes first, which
    took eight times as long on a million ids)."""
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values if keep.all() else values[keep]


def _member(sorted_ids: np.ndarray, values: Any) -> Any:
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return sorted_ids[at] == values


def _as_int64(values: Any) -> np.ndarray | None:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    try:
        return np.fromiter(values, np.int64, len(values))
    except (TypeError, ValueError, OverflowError):
        return None
