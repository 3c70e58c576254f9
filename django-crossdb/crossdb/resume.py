"""Resuming a stopped load: what its run record keeps, and where the next run starts.

Each writer commits its table's batches in input order, so a load stopped anywhere (kill -9,
Ctrl-C, a failed database) has settled a prefix of each input file: every row up to some
line is stored, found present, or rejected. While a run goes on, ``Checkpoints`` keeps, in
the run's record (``crossdb.models.LoadRun.resume``, in ``default``), that line for each
table, with the counts and the rejections of the rows before it, at most once every
``CHECKPOINT_SECONDS``. A table's line advances only when its writer's report of a batch has
been read: the rows of that batch and of every batch before it are then committed.

The next run of the same command (``point_for``) starts each table after its line when:

* the last record of the same input is that run, and it did not finish;
* the table's file has the same path, size and modification time, and the run the same
  databases and the same options (``--on-conflict``, ``--encoding``, ``--map``);
* the record kept every rejection before the line (at most ``KEPT_REJECTIONS`` per table:
  past that, the line stops advancing, and the rest is compared again).

Any other file is read whole and compared set-wise against the stored rows, as a re-run
is. The resumed run reports what the stopped one settled as its own (the counts and every
rejection), so its summary is the one an uninterrupted run would give; the parents it
skipped are known to it from their databases (their stored ids, read once). A resume does
not look at the rows it skips: one deleted since the stopped run is not stored again (run
with ``--no-resume`` to compare every row).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossdb.models import LoadRun
from crossdb.results import Rejection

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 1.0  # the record is written at most this often (a transaction each)
KEPT_REJECTIONS = 1000  # per table: a prefix with more is compared again, not skipped


@dataclass
class TablePoint:
    """One table's settled prefix: every row up to input line ``through``."""

    through: int = 0
    read: int = 0
    stored: int = 0
    present: int = 0
    updated: int = 0
    skipped: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def rejected(self) -> list[Rejection]:
        return [_rejection(r) for r in self.rejections]


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: the stopped run it continues, and each table's settled prefix."""

    run_id: int
    tables: dict[str, TablePoint]

    def through(self, table: str) -> int:
        point = self.tables.get(table)
        return point.through if point else 0

    def describe(self) -> str:
        parts = [
            f"{table} through line {point.through:,}"
            for table, point in self.tables.items()
            if point.through
        ]
        return ", ".join(parts)


def identity(source: Any, options: dict[str, Any]) -> dict[str, Any] | None:
    """What a resumed run must share with the stopped one: its files (path, size and
    modification time each), its databases and its options; None for a source without
    files (generated rows), which is never resumed."""
    files = getattr(source, "files", None)
    if files is None:
        return None
    from crossdb import registry
    from crossdb.databases import location

    stamps = {}
    for table, path in files().items():
        try:
            stat = os.stat(path)
        except OSError:
            return None
        stamps[table] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    aliases = sorted({registry.specs()[t].alias for t in stamps})
    return {
        "files": stamps,
        "databases": {a: location(a) for a in aliases},
        "options": {k: options.get(k) for k in ("on_conflict", "encoding", "map", "map_file")},
    }


def point_for(label: str, wanted: dict[str, Any] | None) -> ResumePoint | None:
    """The point a run of label with identity wanted resumes from, or None."""
    if wanted is None:
        return None
    last = LoadRun.objects.filter(source=label[:500]).order_by("-started_at", "-pk").first()
    if last is None or last.status == LoadRun.DONE or not last.resume:
        return None
    kept = last.resume.get("identity") or {}
    if kept.get("databases") != wanted["databases"] or kept.get("options") != wanted["options"]:
        return None
    tables = {}
    for table, saved in (last.resume.get("tables") or {}).items():
        if kept.get("files", {}).get(table) == wanted["files"].get(table) and saved["through"]:
            tables[table] = TablePoint(**saved)
    return ResumePoint(last.pk, tables) if tables else None


@dataclass
class _Batch:
    through: int
    read: int
    rejections: list[Rejection]


class Checkpoints:
    """Keeps each table's settled prefix in the run's record while the loader runs.

    The loader tells it of every batch it validates (``validated``) and of every report it
    reads (``reported``); a table's prefix advances to the last line of a reported batch,
    with the counts and rejections of every row up to it.
    """

    def __init__(
        self,
        run_id: int,
        wanted: dict[str, Any],
        resumed: ResumePoint | None = None,
        interval: float | None = None,
    ) -> None:
        self.run_id, self.identity = run_id, wanted
        self.interval = CHECKPOINT_SECONDS if interval is None else interval
        self.points: dict[str, TablePoint] = {}
        if resumed is not None:
            for table, point in resumed.tables.items():
                self.points[table] = TablePoint(**asdict(point))
        self.sent: dict[str, deque[_Batch]] = {}
        self.unsent: dict[str, _Batch] = {}  # rows validated since the last batch sent
        self.full: set[str] = set()  # tables whose rejections no longer fit the record
        self.saved_at = time.monotonic()

    def validated(
        self, table: str, through: int | None, read: int, rejections: list[Rejection], sent: bool
    ) -> None:
        """A batch of read rows, ending at input line through, was validated; sent: whether
        rows of it went to the writer (else all were rejected, and it is settled once the
        batches sent before it are)."""
        if through is None or table in self.full:
            return
        carried = self.unsent.pop(table, None)
        batch = _Batch(through, read, list(rejections))
        if carried is not None:
            batch.read += carried.read
            batch.rejections[:0] = carried.rejections
        if sent:
            self.sent.setdefault(table, deque()).append(batch)
        elif self.sent.get(table):
            self.unsent[table] = batch
        else:
            self._advance(table, batch)

    def reported(self, table: str, written: Any) -> None:
        """The writer's report of table's next batch (a ``processes.Written``) was read."""
        pending = self.sent.get(table)
        if not pending or table in self.full:
            return
        self._advance(table, pending.popleft(), written)
        if not pending and table in self.unsent:
            self._advance(table, self.unsent.pop(table))

    def _advance(self, table: str, batch: _Batch, written: Any = None) -> None:
        point = self.points.setdefault(table, TablePoint())
        kept = [*batch.rejections, *(written.rejections if written else ())]
        if len(point.rejections) + len(kept) > KEPT_REJECTIONS:
            self.full.add(table)  # the prefix stays where it is: the rest is compared again
            self.sent.pop(table, None)
            self.unsent.pop(table, None)
            return
        point.through = batch.through
        point.read += batch.read
        if written is not None:
            point.stored += written.stored
            point.present += written.present
            point.updated += written.updated
            point.skipped += written.skipped
        point.rejections.extend(_kept(r) for r in kept)
        self.maybe_save()

    def maybe_save(self) -> None:
        if time.monotonic() - self.saved_at >= self.interval:
            self.save()

    def save(self) -> None:
        """Write the prefixes to the run's record now."""
        self.saved_at = time.monotonic()
        resume = {
            "identity": self.identity,
            "tables": {table: asdict(point) for table, point in self.points.items()},
        }
        LoadRun.objects.filter(pk=self.run_id).update(resume=resume)


def _kept(rejection: Rejection) -> dict[str, Any]:
    line = rejection.line
    return {
        "table": rejection.table,
        "line": None if line is None else [int(line), getattr(line, "last", int(line))],
        "id": rejection.id if isinstance(rejection.id, int | str | None) else str(rejection.id),
        "reason": rejection.reason,
        "values": {k: None if v is None else str(v) for k, v in rejection.values.items()},
        "raw": rejection.raw,
        "missing": [[f, p if isinstance(p, int | str) else str(p)] for f, p in rejection.missing],
    }


def _rejection(kept: dict[str, Any]) -> Rejection:
    from crossdb.loading.rows import Lines

    line = kept["line"]
    if line is not None:
        line = Lines(line[0], line[1]) if line[1] > line[0] else line[0]
    return Rejection(
        kept["table"],
        line,
        kept["id"],
        kept["reason"],
        kept["values"],
        kept["raw"],
        [tuple(m) for m in kept["missing"]],
    )
