"""What a load did: per-table counts, writer timings and rejections with their reasons.

The loader fills a ``LoadResult``; the command prints it (``summary_rows``,
``rejection_lines``), and ``write_json``/``write_rejects`` save it for machines and for the
person who will fix the input and feed the rejects file back with ``--from`` (its format:
``crossdb.rejectsfile``; the files named on the command line: ``crossdb.outputs``; the
run's record for the overview: ``crossdb.runs``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crossdb import registry
from crossdb.loading.rows import Lines
from crossdb.outputs import OutputFile, open_for_writing
from crossdb.rejectionlog import RejectionLog
from crossdb.rejectsfile import rejects_columns, safe_cell


def iso(timestamp: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the millisecond, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# Bytes that are not UTF-8, as the reader keeps them (surrogateescape: U+DC80-U+DCFF); a lone
# surrogate written as a JSON escape is no sign of another encoding, but rare enough.
UNDECODED = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Rejection:
    """One rejected row: where it was, why, its values as read, and its raw text when the
    source could not split it into fields (``crossdb.loading.rows.Malformed.raw``)."""

    table: str
    line: (
        int | None
    )  # an int, a crossdb.loading.rows.Lines for a record over several lines, or None
    id: object
    reason: str
    values: dict[str, Any]
    raw: str | None = None  # the record's text, when it could not be split into fields
    # (reference field, parent id) of each parent the reason says does not exist, so the
    # run can say "was rejected in this run" once every writer has reported (core.pipeline)
    missing: Sequence[tuple[str, Any]] = ()

    @property
    def where(self) -> str:
        label = f"{self.table} #{self.id}" if self.id is not None else self.table
        if self.line is None:  # synthetic rows: there is no file to look in
            return label
        if isinstance(self.line, Lines) and self.line.last > self.line:
            return f"{label} (lines {self.line})"
        return f"{label} (line {self.line})"

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    @property
    def undecoded(self) -> bool:
        """Whether a value holds bytes that were not UTF-8 (``console.encoding_hints``)."""
        return any(isinstance(v, str) and UNDECODED.search(v) for v in self.values.values())


@dataclass
class TableResult:
    table: str
    read: int = 0
    stored: int = 0
    present: int = 0
    rejected: int = 0
    updated: int = 0  # written over a stored row with the same id (on_conflict "update")
    skipped: int = 0  # id stored with other data, the stored row kept (on_conflict "skip")
    undecoded: int = 0  # rejected rows with bytes that are not UTF-8 (``Rejection.undecoded``)
    started: float | None = None  # when its writer first wrote (time.time())
    finished: float | None = None  # when its writer committed its last batch

    @property
    def seconds(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started

    @property
    def handled(self) -> int:
        """Rows its writer settled without rejecting them."""
        return self.stored + self.present + self.updated + self.skipped

    @property
    def rows_per_second(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "stored": self.stored,
            "already_present": self.present,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "writer_started": iso(self.started),
            "writer_finished": iso(self.finished),
        }


@dataclass
class LoadResult:
    source: str
    started: float = 0.0
    finished: float = 0.0
    tables: dict[str, TableResult] = field(
        default_factory=lambda: {t: TableResult(t) for t in registry.tables()}
    )
    # in memory up to a bound, beyond it on disk (a conflicting re-run rejects every row)
    rejections: RejectionLog = field(default_factory=RejectionLog)
    error: str | None = None  # set when a failure stopped the run
    # what became of a row whose id was stored with other data: "reject" (a conflict),
    # "update" or "skip" (``crossdb.loading.writers``); the last two add their count
    # ("updated", "skipped") to the summary, the report and the run record
    on_conflict: str = "reject"
    dry_run: bool = False  # nothing was written: "stored" counts the rows it would store
    # rejections saying a parent does not exist (``Rejection.missing``), which the run may
    # reword once every writer has reported; counted so that a run with none (a conflicting
    # re-run rejects every row, most of them on disk) never reads its rejections for them
    naming_missing: int = 0

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        table = self.tables[rejection.table]
        table.rejected += 1
        table.undecoded += rejection.undecoded
        self.naming_missing += bool(rejection.missing)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def overlaps(self) -> list[str]:
        """Return the pairs of writers that were busy at the same moment, e.g. users+orders."""
        spans = [
            (t.table, t.started, t.finished)
            for t in self.tables.values()
            if t.started and t.finished
        ]
        return [
            f"{a}+{b}"
            for i, (a, a_started, a_finished) in enumerate(spans)
            for b, b_started, b_finished in spans[i + 1 :]
            if max(a_started, b_started) < min(a_finished, b_finished)
        ]

    @property
    def writers_overlapped(self) -> bool:
        """True when at least two writers were busy at the same moment: ``overlaps()`` is
        not empty. One notion, so the report cannot say false beside a list of pairs."""
        return bool(self.overlaps())

    def sorted_rejections(self) -> list[Rejection]:
        """The rejections by table (in commit order), line and id, as a list (a preview, a
        test); the outputs read ``rejections.sorted()`` instead, one at a time, which never
        holds those on disk all at once."""
        return list(self.rejections.sorted())

    def totals(self) -> dict[str, int]:
        keys = ("read", "stored", "present", "rejected", "updated", "skipped")
        return {k: sum(getattr(t, k) for t in self.tables.values()) for k in keys}

    @property
    def counted_apart(self) -> tuple[str, ...]:
        """The verdicts this run counts besides stored, already present and rejected:
        ("updated",) with on_conflict "update", ("skipped",) with "skip", else none."""
        return {"update": ("updated",), "skip": ("skipped",)}.get(self.on_conflict, ())

    def _with_apart(self, counts: dict[str, Any], values: dict[str, int]) -> dict[str, Any]:
        """A report's counts with the run's counts apart: "updated" after "stored",
        "skipped" after "already_present"; values: {"updated": n, "skipped": n}."""
        after = {"stored": "updated", "already_present": "skipped"}
        out: dict[str, Any] = {}
        for key, value in counts.items():
            out[key] = value
            if after.get(key) in self.counted_apart:
                out[after[key]] = values[after[key]]
        return out

    def as_dict(self) -> dict[str, Any]:
        totals = self.totals()
        handled = totals["stored"] + totals["present"] + totals["updated"] + totals["skipped"]
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "on_conflict": self.on_conflict,
            "writers_overlapped": self.writers_overlapped,
            "overlapping_writers": self.overlaps(),
            "tables": {
                name: self._with_apart(t.as_dict(), {"updated": t.updated, "skipped": t.skipped})
                for name, t in self.tables.items()
            },
            "totals": self._with_apart(
                {
                    "read": totals["read"],
                    "stored": totals["stored"],
                    "already_present": totals["present"],
                    "rejected": totals["rejected"],
                    "rows_per_second": round(handled / self.seconds, 1) if self.seconds else 0.0,
                },
                totals,
            ),
        }

    def summary_columns(self) -> tuple[str, ...]:
        """The summary table's headers: table, stored, (updated), already present,
        (skipped), rejected, seconds; the counts apart only when the run gives them."""
        apart = self.counted_apart
        would = "would " if self.dry_run else ""
        return (
            "table",
            f"{would}store" if self.dry_run else "stored",
            *((f"{would}update" if self.dry_run else "updated",) if "updated" in apart else ()),
            "already present",
            *(("skipped",) if "skipped" in apart else ()),
            "rejected",
            "seconds",
        )

    def summary_rows(self) -> Iterator[tuple[Any, ...]]:
        """Rows of the summary table, in the order of ``summary_columns``."""
        apart = self.counted_apart
        for t in self.tables.values():
            yield (
                t.table,
                t.stored,
                *((t.updated,) if "updated" in apart else ()),
                t.present,
                *((t.skipped,) if "skipped" in apart else ()),
                t.rejected,
                f"{t.seconds:.2f}",
            )

    def write_json(self, path: str | os.PathLike[str] | OutputFile) -> None:
        """Write ``as_dict()`` to path (a file name or an ``OutputFile``)."""
        with open_for_writing(path, encoding="utf-8") as handle:
            json.dump(self.as_dict(), handle, indent=2)
            handle.write("\n")

    def write_rejects(self, path: str | os.PathLike[str] | OutputFile) -> None:
        """Write every rejection as a CSV row that can be fixed and fed back with ``--from``.

        The ``id`` column holds the id as it was read (``abc`` when that is the problem), not
        the parsed one, so the person sees what to fix. A record that could not be split
        into fields has its text in ``raw``. ``line`` is ``3`` or ``3-7`` (a record over
        several lines), empty for synthetic rows. Every cell goes through ``safe_cell``.
        """
        with open_for_writing(path, encoding="utf-8", errors="multids-raw", newline="") as handle:
            # the columns of the tables this run read, so the file is no wider than its input
            columns = rejects_columns(self.tables)
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            for r in self.rejections.sorted():
                row = {"table": r.table, "line": r.line, "id": r.id, "reason": r.reason}
                row |= r.values
                row["raw"] = r.raw
                writer.writerow({k: safe_cell(v) for k, v in row.items()})
