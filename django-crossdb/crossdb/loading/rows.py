"""The one shape in which every source hands rows to the validator.

A source yields, per table, ``(line, values)`` pairs:

* ``line`` is the number a person looks for in the input: an ``int`` for a record on one
  line, a ``Lines`` (an ``int`` worth the first line, with ``.last``) for a record that ran
  over several lines, or ``None`` where there is no file (synthetic rows).
* ``values`` is a ``tuple`` of the raw field values in the table's input order
  (``crossdb.registry.fields``): strings from CSV, JSON values from JSONL, Python values from the
  synthetic generator. Or, for a record that could not be split into fields, a
  ``Malformed`` saying why and keeping the raw text so the rejects file can hold it.

Plain tuples rather than a NamedTuple per row: a million-row load makes a million of them,
and a NamedTuple costs five times as much to build. Everything that is not in the hot path
(jobs between processes, results) is a typed record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Lines(int):
    """A record that starts on line ``int(self)`` and ends on line ``self.last``."""

    # No __slots__: CPython refuses a non-empty one on an int subclass ("nonempty __slots__
    # not supported for subtype of 'int'"), so `last` lives in the instance __dict__.
    last: int

    def __new__(cls, first: int, last: int) -> Lines:
        value = super().__new__(cls, first)
        value.last = last
        return value

    def __str__(self) -> str:
        return f"{int(self)}-{self.last}" if self.last > self else str(int(self))

    def __reduce__(self) -> tuple[type[Lines], tuple[int, int]]:
        return (Lines, (int(self), self.last))


@dataclass(frozen=True)
class Malformed:
    """A record the source could not split into fields: why, and its text as read."""

    reason: str
    raw: str | None = None


@dataclass(frozen=True)
class Expected:
    """How much a source will yield for one table, for progress bars and their ETA.

    ``unit`` is "rows" (a known row count, as for synthetic data) or "bytes" (a file's
    size); ``position()`` returns how far reading has got, in that unit.
    """

    total: int | None
    unit: str = "rows"
    position: Callable[[], int] | None = None  # how far reading got; None: count rows read


# One row as a source yields it: (line, values), or (line, Malformed) for an unsplit record.
SourceRow = tuple[int | None, "tuple[Any, ...] | Malformed"]


class NumberText(str):
    """A number as a JSON file wrote it (``1e2``, ``6.5``), kept as its text.

    So a JSON number meets the same rules as the same number in a CSV file (no exponent,
    at most 2 places), and a message shows it as written, unquoted, like any number.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)
