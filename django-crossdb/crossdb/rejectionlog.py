"""The rejections of one run: in memory up to a bound, on disk beyond it.

A conflicting re-run rejects every row, and a rejection holds its values and its reason:
about 600 bytes as objects. Kept in a list, the 11.1M rejections of such a run took 9.3 GB.
``RejectionLog`` keeps at most ``IN_MEMORY`` of them as objects; when that many have come,
it sorts them in the order every output lists rejections (``sort_key``: table in commit
order, line, id) and writes them to an unnamed temporary file as one sorted run, in pickled
blocks of ``BLOCK``. ``sorted()`` merges the runs with the rejections still in memory, one
block of each run at a time, so the summary and the rejects file read them in order without
holding them all. The file is unlinked as it is created: a run that is killed
leaves nothing behind.

Iterating gives every rejection once, in the order they came while none has gone to disk
(the usual case, and every test's); after that, run by run.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from crossdb import registry

log = logging.getLogger(__name__)

IN_MEMORY = 100_000  # rejections held as objects (about 60 MB) before they go to disk
BLOCK = 1_000  # rejections per pickled block: a merge holds one block of each run


def sort_key() -> Callable[[Any], tuple[int, int, str]]:
    """The order rejections are listed in: table (commit order), line, id. The tables'
    order is looked up once (a conflicting re-run sorts every row)."""
    order = {table: i for i, table in enumerate(registry.tables())}
    return lambda r: (order[r.table], r.line or 0, str(r.id))


class RejectionLog:
    """An append-only collection of ``crossdb.results.Rejection``; see the module docstring."""

    def __init__(self, rejections: Iterable[Any] = (), in_memory: int = IN_MEMORY) -> None:
        self._in_memory = in_memory
        self._memory: list[Any] = []
        self._file: IO[bytes] | None = None
        self._runs: list[_Run] = []
        self._on_disk = 0
        for rejection in rejections:
            self.append(rejection)

    def append(self, rejection: Any) -> None:
        self._memory.append(rejection)
        if len(self._memory) >= self._in_memory:
            self._spill()

    def __len__(self) -> int:
        return self._on_disk + len(self._memory)

    def __iter__(self) -> Iterator[Any]:
        for run in self._runs:
            yield from self._read(run)
        yield from self._memory

    def __getitem__(self, index: int) -> Any:
        if not self._runs:
            return self._memory[index]
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RejectionLog | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"<RejectionLog: {len(self):,} rejections, {self._on_disk:,} on disk>"

    def sorted(self) -> Iterator[Any]:
        """Every rejection in ``sort_key`` order; ties keep the order they came in."""
        key = sort_key()
        memory = sorted(self._memory, key=key)
        if not self._runs:
            return iter(memory)
        # heapq.merge takes from the first iterable on ties: the runs are in the order they
        # were written, the list last, so equal keys keep the order they came in.
        return heapq.merge(*(self._read(run) for run in self._runs), memory, key=key)

    def change_each(self, change: Callable[[Any], Any]) -> None:
        """Replace every rejection r the log holds with change(r): at once for those in
        memory, as they are read for those on disk (not those appended later). change must
        keep a rejection's table, line and id: the runs on disk stay sorted by them."""
        self._memory = [change(r) for r in self._memory]
        for run in self._runs:
            run.changes.append(change)

    def close(self) -> None:
        """Drop what is on disk (the file was unlinked when it was created)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._runs, self._on_disk = [], 0

    def _spill(self) -> None:
        self._memory.sort(key=sort_key())
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="multids-rejections-")
            log.info("more than %s rejections: the rest are kept on disk", f"{self._in_memory:,}")
        run = _Run()
        offset = self._file.seek(0, os.SEEK_END)
        for start in range(0, len(self._memory), BLOCK):
            data = pickle.dumps(self._memory[start : start + BLOCK], pickle.HIGHEST_PROTOCOL)
            self._file.write(data)
            run.blocks.append((offset, len(data)))
            offset += len(data)
        self._file.flush()
        self._runs.append(run)
        self._on_disk += len(self._memory)
        self._memory = []

    def _read(self, run: _Run) -> Iterator[Any]:
        assert self._file is not None
        descriptor = self._file.fileno()
        for offset, length in run.blocks:
            for rejection in pickle.loads(os.pread(descriptor, length, offset)):
                for change in run.changes:
                    rejection = change(rejection)
                yield rejection


@dataclass
class _Run:
    """One sorted run on disk: where its blocks are, and the changes made to the log since
    it was written, applied as it is read (``change_each``)."""

    blocks: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of each
    changes: list[Callable[[Any], Any]] = field(default_factory=list)
