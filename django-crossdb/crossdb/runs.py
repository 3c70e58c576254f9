"""The record of each ``insert_data`` run, kept in ``default`` for the overview page.

The command records a run once it is over (``record``). A load started from the admin's
import page runs in a process of its own (``crossdb.importjobs``), so the page can only
learn how it goes from here: ``begin`` records it as running before the process starts,
``RunProgress`` (the loader's progress sink) writes how far it got, and ``finish`` or
``fail`` closes it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from crossdb.models import LoadRun
from crossdb.results import LoadResult

log = logging.getLogger(__name__)

# The progress sink writes the run's record at most this often: a load reports a batch
# every few milliseconds on a small table, and each write is a transaction on ``default``.
PROGRESS_INTERVAL = 1.0


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def record(result: LoadResult) -> None:
    """Keep the run's summary in the default database for the overview page."""
    LoadRun.objects.create(
        started_at=_when(result.started),
        finished_at=_when(result.finished),
        source=result.source[:500],
        summary=result.as_dict(),
    )


def begin(source: str) -> LoadRun:
    """Record a run that is about to start in another process, as running."""
    now = datetime.now(UTC)
    return LoadRun.objects.create(
        started_at=now,
        finished_at=None,
        updated_at=now,
        source=source[:500],
        summary={},
        status=LoadRun.RUNNING,
    )


def finish(run_id: int, result: LoadResult) -> None:
    """Close a running record with the run's summary (what ``record`` keeps)."""
    LoadRun.objects.filter(pk=run_id).update(
        started_at=_when(result.started),
        finished_at=_when(result.finished),
        updated_at=datetime.now(UTC),
        summary=result.as_dict(),
        status=LoadRun.DONE,
        resume={},  # finished: nothing to resume
    )


def fail(run_id: int, message: str) -> None:
    """Close a running record with the one line that says why the run stopped."""
    now = datetime.now(UTC)
    LoadRun.objects.filter(pk=run_id).update(
        finished_at=now, updated_at=now, summary={"error": message}, status=LoadRun.FAILED
    )


class RunProgress:
    """The loader's progress sink (``load(progress=...)``) for a run recorded as running:
    keeps the rows read and handled per table, and how much of each file was read, and
    writes them to the record at most once per ``interval`` seconds (and at ``flush``)."""

    def __init__(self, run_id: int, interval: float = PROGRESS_INTERVAL) -> None:
        self.run_id, self.interval = run_id, interval
        self.tables: dict[str, dict[str, Any]] = {}
        self.expected: dict[str, Any] = {}
        self.saved_at: float | None = None  # the first report is written at once

    def start(self, table: str, expected: Any = None) -> None:
        self.tables[table] = {"read": 0, "written": 0, "fraction": None}
        self.expected[table] = expected
        self._maybe_save()

    def advance(self, table: str, read: int = 0, written: int = 0) -> None:
        counts = self.tables.setdefault(table, {"read": 0, "written": 0, "fraction": None})
        counts["read"] += read
        counts["written"] += written
        self._maybe_save()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{table: {"read", "written", "fraction"}}; fraction: of the table's input read
        (bytes of its file, or rows when the source knows its row count), None if unknown."""
        for table, counts in self.tables.items():
            expected = self.expected.get(table)
            total = getattr(expected, "total", None)
            if not total:
                continue
            position = getattr(expected, "position", None)
            done = position() if position is not None else counts["read"]
            counts["fraction"] = round(min(done / total, 1.0), 3)
        return self.tables

    def _maybe_save(self) -> None:
        if self.saved_at is None or time.monotonic() - self.saved_at >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the progress to the run's record now."""
        self.saved_at = time.monotonic()
        LoadRun.objects.filter(pk=self.run_id, status=LoadRun.RUNNING).update(
            progress=self.snapshot(), updated_at=datetime.now(UTC)
        )
