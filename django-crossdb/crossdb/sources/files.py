"""A directory of data files: which ones are read, which are not and why, and their rows.

A table's file is ``users.csv``, ``users.jsonl``, either with ``.gz``, or ``users.xlsx``
(``crossdb.sources.excel``: a sheet of an Excel workbook, with openpyxl). Anything else
that looks meant for a table (``Orders.csv``, ``orders.csv.bak``, ``orders.txt``, a symlink
to nothing, a FIFO or a directory called ``orders.csv``, a file that cannot be opened) is
not read and is named in ``warnings()``: a silent 0 for a table is the worst answer. The
scan never opens anything that is not a regular file, so a FIFO cannot hang it.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from crossdb import registry
from crossdb.loading.rows import Expected, SourceRow
from crossdb.rules import printable
from crossdb.sources.excel import ExcelSheet, check_excel, excel_rows
from crossdb.sources.mapping import ColumnMap
from crossdb.sources.reading import (
    Opened,
    SourceError,
    Wanted,
    changed,
    csv_rows,
    csv_runs,
    file_size,
    first_jsonl_keys,
    jsonl_rows,
    jsonl_runs,
    missing_message,
    normalized,
    open_csv,
    refuse_json_array,
)

SUFFIXES = (".csv", ".jsonl", ".csv.gz", ".jsonl.gz", ".xlsx")
NAMED = ".csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx"  # SUFFIXES, for messages


def expected() -> str:
    """What a directory may hold, for a message: a file per table, in its formats."""
    return f"{' or '.join(registry.tables())} as {NAMED}"


KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


def is_data_file_name(name: str) -> bool:
    return any(name == f"{table}{suffix}" for table in registry.tables() for suffix in SUFFIXES)


def _looks_like(name: str) -> str | None:
    """Return the table a file name seems meant for, or None: ``Orders.CSV`` -> orders, and
    a near miss such as ``product.csv`` or ``ordres.csv`` (``difflib``'s ratio of at least
    0.8), which would otherwise be left out without a word."""
    stem = _stem(name).casefold()
    tables = registry.tables()
    if stem in tables:
        return stem
    close = difflib.get_close_matches(stem, tables, n=1, cutoff=0.8)
    return close[0] if close else None


def _stem(name: str) -> str:
    return name.split(".", 1)[0].strip()


def _near_miss(name: str, table: str) -> str:
    """Why name, meant for table but not named for it (``product.csv``), is not read."""
    suffix = name[len(name.split(".", 1)[0]) :].casefold()
    meant = table + (suffix if suffix in SUFFIXES else ".csv")
    return f"no table is called '{printable(_stem(name))}'; did you mean {meant}?"


def _why_not_readable(path: Path) -> str | None:
    """Return why an exactly named entry cannot be read, or None; never blocks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a symlink to nothing: {printable(os.readlink(path))}"
        return "it disappeared while the directory was read"
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in KINDS.items() if test(mode)), "not a regular file")
        return f"{kind}, not a regular file"
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    return None


class FileSource:
    """The files of one directory, a table's each (.csv or .jsonl, maybe gzipped, or .xlsx).

    mapping (``crossdb.sources.mapping.ColumnMap``) says which column feeds which field
    where a file's names are not the fields'; None reads every field by its name.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        encoding: str | None = None,
        mapping: ColumnMap | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.encoding = encoding  # of every file (None: UTF-8), as --encoding names it
        self.mapping = mapping if mapping is not None else ColumnMap()
        self._hints: list[str] = []  # what check() found in a JSONL file's first line
        self.label = str(self.directory)
        self._found: dict[str, Path] | None = None
        self._skipped: list[tuple[Path, str]] = []  # (path, why not read)
        # table -> the Opened (or ExcelSheet) being streamed, for expected().position
        self._reading: dict[str, Opened | ExcelSheet] = {}
        self._sheet_rows: dict[str, int | None] = {}  # a sheet's declared rows, from check()
        self.after: dict[str, int] = {}  # table -> the line its rows start after (resume)

    def _scan(self) -> dict[str, Path]:
        """Return {table: path} and note what is not read; raise SourceError if nothing can be."""
        if self._found is not None:
            return self._found
        if not self.directory.is_dir():
            raise SourceError(f"--from {self.directory}: no such directory")
        candidates: dict[str, list[Path]] = {t: [] for t in registry.tables()}
        for name in sorted(os.listdir(self.directory)):
            table = _looks_like(name)
            if table is None:
                continue
            path = self.directory / name
            if is_data_file_name(name):
                why = _why_not_readable(path)
                if why is None:
                    candidates[table].append(path)
                    continue
            elif is_data_file_name(name.casefold()):
                why = f"file names are lower case: rename it {name.casefold()}"
            elif _stem(name).casefold() != table:
                why = _near_miss(name, table)
            else:
                why = f"unknown extension: name it {table}{NAMED}"
            self._skipped.append((path, why))
        for paths in candidates.values():
            if len(paths) > 1:
                names = " and ".join(p.name for p in paths)
                raise SourceError(f"{self.directory}: both {names} exist; keep one")
        found = {t: paths[0] for t, paths in candidates.items() if paths}
        if not found:
            if self._skipped:
                listed = "; ".join(f"{printable(p.name)} ({why})" for p, why in self._skipped)
                raise SourceError(f"{self.directory}: no file could be read. Found: {listed}")
            raise SourceError(f"{self.directory}: no file of a table ({expected()})")
        self._found = found
        return found

    def files(self) -> dict[str, Path]:
        return dict(self._scan())

    def warnings(self) -> list[str]:
        """One line per file that looks meant for a table but is not read, saying why."""
        found = self._scan()
        unused = [
            f"{entry.origin}: not used, {self.directory} has no {entry.table} file"
            for entry in self.mapping
            if entry.table not in found
        ]
        skipped = [f"{printable(str(path))}: not read ({why})" for path, why in self._skipped]
        return [*skipped, *unused, *self._hints]

    def input_paths(self) -> list[Path]:
        return [path.resolve() for path in self._scan().values()]

    def _wanted(self, table: str) -> Wanted:
        """The columns table's file is read for (the fields' own names unless the mapping
        renames some), with those a file may leave out."""
        return self.mapping.wanted(table)

    def check(self) -> None:
        self._hints = []
        for table, path in self._scan().items():
            wanted = self._wanted(table)
            if _is_excel(path):
                self._sheet_rows[table] = check_excel(path, table, wanted)
                continue
            with Opened(path, self.encoding) as opened:
                if _is_csv(path):
                    header, _reader = open_csv(opened, wanted)
                    header.positions(wanted)
                    continue
                refuse_json_array(opened)
            with Opened(path, self.encoding) as opened:
                keys = first_jsonl_keys(opened)
            if keys is not None:
                self._check_first_keys(path, wanted, keys)

    def _check_first_keys(self, path: Path, wanted: Wanted, keys: list[str]) -> None:
        """JSONL has no header: its first object stands for one. A mapped key it lacks stops
        the run, as a CSV header lacking the column does; a field's own key it lacks, with
        another key close to it, is a warning with the ``--map`` that would read it (each
        line lacking the key is rejected for it, as JSONL rows always were)."""
        found = {normalized(k) for k in keys}
        lacking = [
            name
            for name in wanted
            if name not in keys and normalized(name) not in found and name not in wanted.optional
        ]
        if not lacking:
            return
        shown = printable(",".join(keys))
        mapped = [name for name in lacking if name in wanted.origins]
        if mapped:
            raise SourceError(
                missing_message(path, wanted, mapped, keys, shown, " on line 1", kind="key")
            )
        message = missing_message(path, wanted, lacking, keys, shown, " on line 1", kind="key")
        if "; did you mean --map" in message:
            self._hints.append(message)

    def tables(self) -> list[str]:
        return [t for t in registry.tables() if t in self._scan()]

    def expected(self, table: str) -> Expected:
        """The file's size in bytes, and how many of them (compressed, for .gz) are read."""
        path = self._scan()[table]

        def position() -> int:
            opened = self._reading.get(table)  # set when rows(table) opens the file
            return opened.position() if opened is not None else 0

        if _is_excel(path):  # a workbook is not read front to back: count the sheet's rows
            return Expected(self._sheet_rows.get(table), "rows", position)
        return Expected(file_size(path), "bytes", position)

    def check_unchanged(self) -> None:
        """Raise SourceError if a file read in this run has changed since it was opened:
        rows written to it after its end was read (before it, ``Opened`` stops the run
        itself) are not loaded, and a re-run must load them."""
        for opened in self._reading.values():
            try:
                now = os.stat(opened.path)
            except FileNotFoundError:
                now = None  # removed once read: what was read was whole
            if problem := changed(opened.path, opened.at_open, now):
                raise SourceError(problem)

    def rows(self, table: str) -> Iterator[SourceRow]:
        path = self._scan()[table]
        wanted = self._wanted(table)
        if _is_excel(path):
            rows = excel_rows(path, table, wanted, track=self._tracker(table))
        else:
            read = csv_rows if _is_csv(path) else jsonl_rows
            rows = read(path, wanted, track=self._tracker(table), encoding=self.encoding)
        left_out = self.mapping.left_out(table)
        return _filled(rows, left_out) if left_out else rows

    def runs(self, table: str) -> Iterator[Any]:
        path = self._scan()[table]
        if _is_excel(path):
            return iter((self.rows(table),))  # one run: a sheet's rows go one by one (filled)
        read = csv_runs if _is_csv(path) else jsonl_runs
        left_out = self.mapping.left_out(table)
        after = self.after.get(table, 0) if _is_csv(path) else 0
        options = {"after_line": after} if after else {}
        runs = read(
            path,
            self._wanted(table),
            self._tracker(table),
            # a Block holds the columns read; rows with a field left out are filled one by one
            whole_numbers=registry.specs()[table].whole_numbers and not left_out,
            encoding=self.encoding,
            **options,
        )
        if not left_out:
            return runs
        return (_filled(run, left_out) for run in runs)

    def start_after(self, table: str, line: int) -> None:
        """Begin table's rows after input line (a resumed run's settled prefix): a CSV file
        is read past those lines without parsing them; the loader leaves out the rows of
        any other up to it (``crossdb.loading.load.after_line``)."""
        self.after[table] = line

    def _tracker(self, table: str) -> Callable[[Opened | ExcelSheet], None]:
        return lambda opened: self._reading.update({table: opened})


def _filled(rows: Iterable[SourceRow], left_out: tuple[int, ...]) -> Iterator[SourceRow]:
    """rows with None, the value of a missing optional column, at each position of a field
    the mapping leaves out (ascending), so every row has the table's fields in order."""
    for line, values in rows:
        if isinstance(values, tuple):
            filled = list(values)
            for position in left_out:
                filled.insert(position, None)
            values = tuple(filled)
        yield line, values


def _is_csv(path: Path) -> bool:
    return path.name.endswith((".csv", ".csv.gz"))


def _is_excel(path: Path) -> bool:
    return path.name.endswith(".xlsx")
