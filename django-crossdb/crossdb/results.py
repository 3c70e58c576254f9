"""What a load did: per-table counts, writer timings and rejections with their reasons.

The pipeline fills a ``LoadResult``; the command prints it (``summary_rows``,
``rejection_lines``), and ``write_json``/``write_rejects`` save it for machines and for the
person who will fix the input and feed the rejects file back with ``--from``.
"""

from __future__ import annotations

import codecs
import csv
import errno
import fcntl
import json
import os
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from crossdb import registry
from crossdb.loading.rows import Lines
from crossdb.registry import fields


def rejects_columns(tables: Collection[str] | None = None) -> tuple[str, ...]:
    """The rejects file's header for rows of tables (default: every table, what a rejects
    file may hold): what, where, why, every field, raw."""
    names = [t for t in registry.tables() if tables is None or t in tables]
    return (
        ("table", "line", "id", "reason")
        + tuple(dict.fromkeys(f for t in names for f in fields(t) if f != "id"))
        + ("raw",)
    )


# What a spreadsheet may run as a formula (OWASP, CSV injection), and the escape itself.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def safe_cell(value: Any) -> Any:
    """Return value as a rejects-file cell no spreadsheet runs: ``'`` before a formula start.

    ``'`` itself is escaped too, so ``unsafe_cell`` can drop exactly one leading ``'`` and
    every value reads back as it was (``-1`` -> ``'-1`` -> ``-1``).
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def unsafe_cell(text: str) -> str:
    """Undo ``safe_cell``, as a spreadsheet does: one leading ``'`` marks text."""
    return text[1:] if text.startswith("'") else text


def iso(timestamp: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the millisecond, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _raw_bytes(error: UnicodeError) -> tuple[bytes, int]:
    """Encode the characters UTF-8 cannot take back into the bytes they were read from.

    Undecodable input bytes are read as lone surrogates (surrogateescape) and go back out as
    the same bytes; a surrogate from a JSON escape such as ``"\\ud800"`` has no original
    bytes, so it is written as its surrogate encoding. Either way the rejects file holds the
    value as it was, still invalid until a person fixes it, instead of failing to be written.
    """
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        out += (
            bytes([code - 0xDC00])
            if 0xDC80 <= code <= 0xDCFF
            else char.encode("utf-8", "surrogatepass")
        )
    return bytes(out), error.end


codecs.register_error("multids-raw", _raw_bytes)


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

    def sort_key(self) -> tuple[int, int, str]:
        return (registry.tables().index(self.table), self.line or 0, str(self.id))


@dataclass
class TableResult:
    table: str
    read: int = 0
    stored: int = 0
    present: int = 0
    rejected: int = 0
    started: float | None = None  # when its writer first wrote (time.time())
    finished: float | None = None  # when its writer committed its last batch

    @property
    def seconds(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started

    @property
    def rows_per_second(self) -> float:
        return (self.stored + self.present) / self.seconds if self.seconds else 0.0

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
    rejections: list[Rejection] = field(default_factory=list)
    error: str | None = None  # set when a failure stopped the run

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self.tables[rejection.table].rejected += 1

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
        return sorted(self.rejections, key=Rejection.sort_key)

    def totals(self) -> dict[str, int]:
        keys = ("read", "stored", "present", "rejected")
        return {k: sum(getattr(t, k) for t in self.tables.values()) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "source": self.source,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "writers_overlapped": self.writers_overlapped,
            "overlapping_writers": self.overlaps(),
            "tables": {name: t.as_dict() for name, t in self.tables.items()},
            "totals": {
                "read": totals["read"],
                "stored": totals["stored"],
                "already_present": totals["present"],
                "rejected": totals["rejected"],
                "rows_per_second": round((totals["stored"] + totals["present"]) / self.seconds, 1)
                if self.seconds
                else 0.0,
            },
        }

    def summary_rows(self) -> Iterator[tuple[str, int, int, int, str]]:
        """Rows of the summary table: table, stored, already present, rejected, seconds."""
        for t in self.tables.values():
            yield (t.table, t.stored, t.present, t.rejected, f"{t.seconds:.2f}")

    def write_json(self, path: str | os.PathLike[str] | OutputFile) -> None:
        """Write ``as_dict()`` to path (a file name or an ``OutputFile``)."""
        with _open_for_writing(path, encoding="utf-8") as handle:
            json.dump(self.as_dict(), handle, indent=2)
            handle.write("\n")

    def write_rejects(self, path: str | os.PathLike[str] | OutputFile) -> None:
        """Write every rejection as a CSV row that can be fixed and fed back with ``--from``.

        The ``id`` column holds the id as it was read (``abc`` when that is the problem), not
        the parsed one, so the person sees what to fix. A record that could not be split
        into fields has its text in ``raw``. ``line`` is ``3`` or ``3-7`` (a record over
        several lines), empty for synthetic rows. Every cell goes through ``safe_cell``.
        """
        with _open_for_writing(path, encoding="utf-8", errors="multids-raw", newline="") as handle:
            # the columns of the tables this run read, so the file is no wider than its input
            columns = rejects_columns(self.tables)
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            for r in self.sorted_rejections():
                row = {"table": r.table, "line": r.line, "id": r.id, "reason": r.reason}
                row |= r.values
                row["raw"] = r.raw
                writer.writerow({k: safe_cell(v) for k, v in row.items()})


class OutputError(Exception):
    """An output file that cannot be written; found before anything is read or stored."""


KINDS = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device"}


class OutputFile:
    """A file named on the command line (``--rejects``, ``--report``), written at the end.

    ``check()`` runs before any input is read, so a file that cannot be written stops the
    run before a row is stored, not after every row is committed (a missing directory, a
    directory, a file without write permission). Nothing here ever waits: opening a FIFO
    for writing blocks until a process reads it, for ever if none does, so a FIFO (or a
    device, or a socket) is opened at the check with ``O_NONBLOCK``, which fails at once
    when nobody reads it, and kept open for the end; a regular file is opened the same way
    at the end, so one replaced by a FIFO meanwhile fails instead of hanging.
    """

    def __init__(self, option: str, path: str | os.PathLike[str]) -> None:
        self.option = option  # "--report"
        self.path = Path(path)
        self.fd: int | None = None  # opened by check() when the path is not a regular file

    def __str__(self) -> str:
        return str(self.path)

    def check(self) -> None:
        """Raise OutputError, in one line naming the option, unless path can be written."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            self._check_directory()
            return
        except OSError as exc:
            raise self._error(exc.strerror) from exc
        if stat.S_ISDIR(mode):
            raise self._error("it is a directory; name a file")
        if stat.S_ISREG(mode):
            if not os.access(self.path, os.W_OK):
                raise self._error("cannot write it (permission denied)")
            return
        kind = next((k for test, k in KINDS.items() if test(mode)), "not a regular file")
        self.fd = self._open_without_waiting(os.O_WRONLY, kind)

    def _check_directory(self) -> None:
        directory = Path(os.path.abspath(self.path)).parent
        if not directory.is_dir():
            what = "no such directory" if not directory.exists() else "not a directory"
            raise self._error(f"{what}: {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise self._error(f"cannot create a file in {directory} (permission denied)")

    def _open_without_waiting(self, flags: int, kind: str = "a FIFO") -> int:
        """os.open(path) with O_NONBLOCK, which is then cleared: a FIFO nobody reads fails
        at once (ENXIO) instead of blocking; once open, writes wait for the reader."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise self._error(
                    f"{kind} that no process is reading; start its reader first, "
                    "or name a regular file"
                ) from exc
            raise self._error(exc.strerror) from exc
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd

    def open(self, **text: Any) -> IO[str]:
        """The file open for writing text (``text``: open()'s encoding, errors, newline)."""
        fd, self.fd = self.fd, None
        if fd is None:
            fd = self._open_without_waiting(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        return open(fd, "w", **text)  # noqa: SIM115 - the caller closes it

    def _error(self, why: str | None) -> OutputError:
        return OutputError(f"{self.option} {self.path}: {why}")


def _open_for_writing(target: str | os.PathLike[str] | OutputFile, **text: Any) -> IO[str]:
    if isinstance(target, OutputFile):
        return target.open(**text)
    return open(target, "w", **text)  # noqa: SIM115 - the caller closes it


def record(result: LoadResult) -> None:
    """Keep the run's summary in the default database for the overview page."""
    from crossdb.models import LoadRun

    LoadRun.objects.create(
        started_at=datetime.fromtimestamp(result.started, UTC),
        finished_at=datetime.fromtimestamp(result.finished, UTC),
        source=result.source[:500],
        summary=result.as_dict(),
    )
