"""Export: every registered table written into the files ``insert_data --from`` reads.

``export(directory)`` writes one file per table of ``crossdb.registry`` (``users.csv``,
``orders.jsonl.gz``, ... named by ``db_table``), with the registry's input fields as the
header or the JSON keys, primary key first, rows in key order. Loading the directory
again (``insert_data --from DIR``, on any backend) stores the same rows: that is how a
project moves from SQLite files on a laptop to PostgreSQL servers.

How values are spelled, each in a form the loader's rules (``crossdb.rules``) read back
as the same value:

* decimals in plain notation (``30.00``, never ``3E+1``); in JSONL as strings, since a
  JSON number is a float to most readers;
* floats as Python's shortest exact text (``0.1``, ``1e-05``);
* booleans ``true`` / ``false``; dates ``YYYY-MM-DD``; datetimes ISO 8601 with their
  offset when ``USE_TZ`` is on (``2024-05-01T09:30:00+00:00``); UUIDs hyphenated;
* NULL as an empty cell in CSV, ``null`` in JSONL;
* text as stored, in UTF-8; CSV quotes the values holding a comma, a quote or a line
  break.

Every row written is read back through the same rules before it is written
(``TableSpec.clean``), and a row that would not load as it is stored (a text with a
line break or spaces around it, written by raw SQL; an empty text in a column that
also allows NULL, which a file cannot tell from NULL) is counted and named in the
result (``Misfit``): the file still holds it, as it is, and the person knows before the
load rejects or changes it.

Guarantees:

* Bounded memory: each table is read with one chunked query in key order (a server-side
  cursor on PostgreSQL, ``fetchmany`` on SQLite), ``chunk_size`` rows at a time.
* Only reads: on PostgreSQL in a ``READ ONLY`` transaction, on SQLite with
  ``PRAGMA query_only``, so a write would fail rather than happen. Each table is read
  in one statement, so its file is the table at one moment. Children are read before
  their parents: writers commit parents first (``crossdb.guard``), so every parent a
  child names was committed before the child was read and is in the parent's file,
  however busy a concurrent load is (the reasoning of ``crossdb.integrity``).
* No half files: each file is written under a hidden temporary name in the directory
  (``.users.csv.XXXX.part``, which the loader never reads) and renamed to its real name
  only once every table has been written; an error or Ctrl-C removes the temporary
  files and leaves the directory as it was.
* Checked first (``check_directory``), before any database is read: the directory or
  its parent must exist, files must be creatable in it, and no file of a table may be
  there already unless ``force`` (then a table's other files, ``users.jsonl`` beside a
  new ``users.csv``, are removed too: the loader refuses a directory holding both).
  Something that is not a regular file under a table's name (a FIFO, a directory) is
  refused even with ``force``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gzip
import io
import json
import logging
import math
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import IO, Any, Protocol

from django.db import DatabaseError, connections, transaction

from crossdb import registry, rules
from crossdb.registry import TableSpec
from crossdb.sources import files
from crossdb.sources.files import SUFFIXES

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")
DEFAULT_CHUNK_SIZE = 10_000  # rows fetched per round trip, and written per batch
KEPT_MISFITS = 20  # misfits kept per table in the result; the count covers all
KINDS = {**files.KINDS, stat.S_ISLNK: "a symlink"}  # what else a path may be (lstat)


class ExportError(Exception):
    """Why the export cannot be done, in one line naming the path or the table."""


class Progress(Protocol):
    """What ``export`` tells about its work (``crossdb.console.progress_for`` makes one)."""

    def start(self, table: str, expected: Any = None) -> None: ...

    def advance(self, table: str, read: int = 0, written: int = 0) -> None: ...


class _Silent:
    def start(self, table: str, expected: Any = None) -> None:
        pass

    def advance(self, table: str, read: int = 0, written: int = 0) -> None:
        pass


@dataclass(frozen=True)
class Misfit:
    """A stored row whose line in the file would not load back as the same row."""

    table: str
    pk: Any
    why: str

    def __str__(self) -> str:
        return f"{registry.spec(self.table).noun} {self.pk}: {self.why}"


@dataclass
class TableExport:
    """One table's file: where, how many rows, and the rows that would not load back."""

    table: str
    path: Path
    rows: int = 0
    seconds: float = 0.0
    misfit_count: int = 0
    misfits: list[Misfit] = field(default_factory=list)  # the first KEPT_MISFITS

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class ExportResult:
    directory: Path
    tables: dict[str, TableExport]  # in commit order
    removed: list[Path] = field(default_factory=list)  # other files of a table (force)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def misfit_count(self) -> int:
        return sum(t.misfit_count for t in self.tables.values())


def file_name(table: str, file_format: str = "csv", compress: bool = False) -> str:
    """The name ``insert_data --from`` reads for table in file_format (``orders.jsonl.gz``)."""
    return f"{table}.{file_format}{'.gz' if compress else ''}"


@dataclass(frozen=True)
class Plan:
    """What ``check_directory`` found: the files to write and those force will remove."""

    directory: Path
    targets: dict[str, Path]  # table -> its file, in commit order
    replaced: list[Path]  # files that are there already under a target's name
    stale: list[Path]  # other files of the tables (another format), removed at the end


def check_directory(
    directory: str | os.PathLike[str],
    file_format: str = "csv",
    compress: bool = False,
    force: bool = False,
) -> Plan:
    """Raise ExportError unless every file can be written in directory; return the Plan.

    Nothing is created or changed here, and nothing blocks (no file is opened).
    """
    if file_format not in FORMATS:
        raise ExportError(f"--format {rules.printable(file_format)}: choose csv or jsonl")
    path = Path(directory)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = Path(os.path.abspath(path)).parent
        if not parent.is_dir():
            raise ExportError(
                f"{path}: its parent directory {parent} does not exist; create it first"
            ) from None
        _check_creatable(parent)
        targets = {t: path / file_name(t, file_format, compress) for t in registry.tables()}
        return Plan(path, targets, [], [])
    except OSError as exc:
        raise ExportError(f"{path}: cannot use it ({exc.strerror})") from exc
    if not stat.S_ISDIR(mode):
        raise ExportError(f"{path}: {_kind(mode, 'a file')}, not a directory")
    _check_creatable(path)
    targets = {t: path / file_name(t, file_format, compress) for t in registry.tables()}
    present: list[Path] = []
    stale: list[Path] = []
    for table, target in targets.items():
        for suffix in SUFFIXES:
            candidate = path / f"{table}{suffix}"
            try:
                found = os.lstat(candidate).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(found):
                raise ExportError(
                    f"{candidate}: {_kind(found, 'not a regular file')} where {table}'s file "
                    "goes; remove it, or choose another directory"
                )
            (present if candidate == target else stale).append(candidate)
    if (present or stale) and not force:
        names = ", ".join(p.name for p in present + stale)
        raise ExportError(
            f"{path} already holds {names}; give --force to replace them, "
            "or choose an empty directory"
        )
    return Plan(path, targets, present, stale)


def _kind(mode: int, otherwise: str) -> str:
    return next((kind for test, kind in KINDS.items() if test(mode)), otherwise)


def _check_creatable(directory: Path) -> None:
    """Create and remove a temporary file: the only test a superuser cannot pass by being
    one (``os.access`` says yes to root, who still cannot create a file in ``/sys``)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".export-probe."):
            pass
    except OSError as exc:
        raise ExportError(f"{directory}: cannot create files in it ({exc.strerror})") from exc


def export(
    directory: str | os.PathLike[str],
    file_format: str = "csv",
    compress: bool = False,
    force: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> ExportResult:
    """Write every registered table into directory (see the module's docstring).

    Raises ExportError (one line) for a directory that cannot take the files, a database
    that fails while it is read, or a file that cannot be written; then the directory is
    as it was (a directory created for the export is left, empty).
    """
    if chunk_size < 1:
        raise ExportError(f"the chunk size must be at least 1 (got {chunk_size})")
    plan = check_directory(directory, file_format, compress, force)
    progress = progress or _Silent()
    began = time.monotonic()
    try:
        plan.directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{plan.directory}: cannot create it ({exc.strerror})") from exc
    specs = registry.specs()
    results = {t: TableExport(t, path) for t, path in plan.targets.items()}
    parts: dict[str, Path] = {}
    try:
        for table in reversed(list(plan.targets)):  # children first (the module's docstring)
            parts[table] = _write_table(
                specs[table], results[table], file_format, compress, chunk_size, progress
            )
        for table, part in parts.items():
            os.replace(part, plan.targets[table])
        _sync_directory(plan.directory)
    except OSError as exc:
        raise ExportError(
            f"{exc.filename or plan.directory}: cannot write ({exc.strerror})"
        ) from exc
    finally:
        for part in parts.values():
            with contextlib.suppress(FileNotFoundError):
                part.unlink()  # left only when something failed before its rename
    removed = []
    for path in plan.stale:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ExportError(
                f"{path}: cannot remove it ({exc.strerror}); the loader refuses a table with "
                "two files: remove it by hand"
            ) from exc
        removed.append(path)
        logger.info("removed %s, another file of the same table", path)
    ordered = {t: results[t] for t in plan.targets}
    return ExportResult(plan.directory, ordered, removed, time.monotonic() - began)


def _write_table(
    spec: TableSpec,
    result: TableExport,
    file_format: str,
    compress: bool,
    chunk_size: int,
    progress: Progress,
) -> Path:
    """Write spec's table to a temporary file next to result.path; return that file."""
    began = time.monotonic()
    progress.start(spec.name)
    fd, name = tempfile.mkstemp(
        dir=result.path.parent, prefix=f".{result.path.name}.", suffix=".part"
    )
    part = Path(name)
    try:
        _permissions_as_created(fd)
        with (
            _TextFile(fd, compress) as text,
            contextlib.closing(_stored_rows(spec, chunk_size)) as rows,
        ):
            write = _csv_writer(spec, text) if file_format == "csv" else _jsonl_writer(spec, text)
            spell = spell_csv if file_format == "csv" else spell_json
            while batch := list(islice(rows, chunk_size)):
                raw = [tuple(map(spell, row)) for row in batch]
                _check_back(spec, batch, raw, result)
                try:
                    write(raw)
                except UnicodeEncodeError as exc:
                    raise ExportError(_not_utf8(spec, batch, raw)) from exc
                result.rows += len(batch)
                progress.advance(spec.name, read=len(batch), written=len(batch))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    result.seconds = time.monotonic() - began
    logger.info("%s: %d rows written to %s", spec.name, result.rows, result.path)
    return part


def _permissions_as_created(fd: int) -> None:
    """mkstemp makes the file readable by its owner alone; give it the mode a plain
    ``open()`` would (0666 less the umask), as the renamed file is an ordinary output."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


class _TextFile:
    """fd as UTF-8 text (gzip-compressed with compress), flushed to disk when closed."""

    def __init__(self, fd: int, compress: bool) -> None:
        self.raw = open(fd, "wb")  # noqa: SIM115 - closed by __exit__
        binary: io.BufferedWriter | gzip.GzipFile = self.raw
        self.gzip: gzip.GzipFile | None = None
        if compress:  # mtime 0 and no name: the same rows give the same bytes
            self.gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0)
            binary = self.gzip
        self.text = io.TextIOWrapper(binary, encoding="utf-8", newline="", write_through=False)

    def __enter__(self) -> IO[str]:
        return self.text

    def __exit__(self, *exc: object) -> None:
        try:
            self.text.flush()
            if self.gzip is not None:
                self.gzip.close()  # writes the gzip trailer; leaves self.raw open
            self.raw.flush()
            if exc[0] is None:
                os.fsync(self.raw.fileno())
        finally:
            self.raw.close()


def _sync_directory(directory: Path) -> None:
    """Make the renames durable: a crash after export() returns keeps the files."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- Reading, only reading ------------------------------------------------------------------


def _stored_rows(spec: TableSpec, chunk_size: int) -> Generator[tuple[Any, ...], None, None]:
    """Every stored row of spec's table as a tuple in ``spec.fields`` order, in key order,
    chunk_size at a time, from the primary (never a replica), in a read-only session."""
    queryset = (
        spec.model._base_manager.using(spec.alias)  # every row, whatever ``objects`` filters
        .order_by("pk")
        .values_list(*spec.fields)
    )
    try:
        with _read_only(spec.alias):
            yield from queryset.iterator(chunk_size=chunk_size)
    except DatabaseError as exc:
        raise ExportError(f"{spec.name} on {spec.alias}: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _read_only(alias: str) -> Iterator[None]:
    """A session on alias in which the database itself refuses any write.

    PostgreSQL: a transaction of its own, ``READ ONLY`` (inside a caller's transaction the
    caller's mode is left alone). SQLite: ``PRAGMA query_only`` for the time of the read,
    then as it was; no transaction, since the project's SQLite transactions begin
    ``IMMEDIATE`` and would hold the write lock (one statement is a snapshot anyway).
    """
    connection = connections[alias]
    if connection.vendor == "postgresql":
        if connection.in_atomic_block:
            yield
            return
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
            yield
    elif connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA query_only")
            before = cursor.fetchone()[0]
            cursor.execute("PRAGMA query_only = ON")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA query_only = {int(before)}")
    else:
        yield


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# --- Spelling values ---------------------------------------------------------------------


def _plain_decimal(value: Decimal) -> str:
    return format(value, "f")  # never an exponent: the decimal rule refuses one


def _float_text(value: float) -> str:
    return repr(value)  # the shortest text that reads back as the same float


def _iso(value: datetime.date) -> str:
    return value.isoformat()


_CSV_SPELLINGS: dict[type, Callable[[Any], str]] = {
    str: str,
    int: str,
    bool: lambda v: "true" if v else "false",
    type(None): lambda v: "",
    Decimal: _plain_decimal,
    float: _float_text,
    datetime.date: _iso,
    datetime.datetime: _iso,
    uuid.UUID: str,
}


def spell_csv(value: Any) -> str:
    """value as a CSV cell the loader's rules read back as the same value."""
    spelling = _CSV_SPELLINGS.get(type(value))
    if spelling is not None:
        return spelling(value)
    if isinstance(value, datetime.date):  # a subclass (a time zone's datetime type)
        return value.isoformat()
    return str(value)


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # JSON has no inf: the rule says why


_JSON_SPELLINGS: dict[type, Callable[[Any], Any]] = {
    str: lambda v: v,
    int: lambda v: v,
    bool: lambda v: v,
    type(None): lambda v: v,
    Decimal: _plain_decimal,
    float: _json_float,
    datetime.date: _iso,
    datetime.datetime: _iso,
    uuid.UUID: str,
}


def spell_json(value: Any) -> Any:
    """value as a JSON value the loader's rules read back as the same value."""
    spelling = _JSON_SPELLINGS.get(type(value))
    if spelling is not None:
        return spelling(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _csv_writer(spec: TableSpec, text: IO[str]) -> Callable[[Sequence[Sequence[Any]]], None]:
    # CRLF, as RFC 4180 has it: the csv module quotes a value holding any character of the
    # line terminator, so a lone CR in a text is quoted too, not read as a line end.
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(spec.fields)
    return writer.writerows


def _jsonl_writer(spec: TableSpec, text: IO[str]) -> Callable[[Sequence[Sequence[Any]]], None]:
    fields = spec.fields
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

    def write(rows: Sequence[Sequence[Any]]) -> None:
        text.write("".join(f"{dumps(dict(zip(fields, row, strict=True)))}\n" for row in rows))

    return write


# --- Reading back ------------------------------------------------------------------------


def _check_back(
    spec: TableSpec,
    stored: Sequence[tuple[Any, ...]],
    written: Sequence[tuple[Any, ...]],
    result: TableExport,
) -> None:
    """Count (and keep the first of) the rows whose written values the loader's rules
    would reject or read as other values than the stored ones."""
    width = len(spec.fields)
    for row, raw in zip(stored, written, strict=True):
        cleaned, problems = spec.clean(raw)
        if not problems and cleaned[:width] == row:
            continue
        result.misfit_count += 1
        if len(result.misfits) < KEPT_MISFITS:
            result.misfits.append(Misfit(spec.name, row[0], _why(spec, row, cleaned, problems)))


def _why(
    spec: TableSpec,
    stored: tuple[Any, ...],
    cleaned: tuple[Any, ...],
    problems: Sequence[rules.Problem],
) -> str:
    if problems:
        return "; ".join(p.message for p in problems) + " (the load would reject it)"
    changed = [
        f"{name} {rules.shown(before)} would load as {rules.shown(after)}"
        for name, before, after in zip(spec.fields, stored, cleaned, strict=False)
        if before != after
    ]
    return "; ".join(changed)


def _not_utf8(spec: TableSpec, stored: Sequence[tuple[Any, ...]], raw: Sequence[Any]) -> str:
    """Name the first row of a batch holding text that UTF-8 cannot write."""
    for row, values in zip(stored, raw, strict=True):
        for name, value in zip(spec.fields, values, strict=True):
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{spec.name} {row[0]}: {name} holds text that is not valid UTF-8"
    return f"{spec.name}: a value is not valid UTF-8 text"
