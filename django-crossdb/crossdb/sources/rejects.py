"""A rejects file written by ``--rejects``, fixed by hand and loaded again with ``--from``.

Its ``table`` column says where each row goes; a row is read from the columns of that
table's fields. Cells were written spreadsheet-safe (``crossdb.rejectsfile.safe_cell``: a leading
``'`` before ``=``, ``+``, ``-``, ``@``, tab, CR or ``'``); one leading ``'`` is dropped on
reading, as a spreadsheet does, so ``'-1`` is read as ``-1``. A row that could not be split
into fields the first time has only its ``raw`` column: until its values are copied into
the field columns it is rejected again, raw text kept, so it can go round as often as
needed. Line numbers are those of the rejects file, which is the file the person edits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossdb import registry
from crossdb.loading.rows import Expected, Malformed, SourceRow
from crossdb.registry import fields
from crossdb.rejectsfile import rejects_columns, unsafe_cell
from crossdb.sources.mapping import ColumnMap
from crossdb.sources.reading import Opened, SourceError, csv_records


class RejectsFileSource:
    """mapping: not used, since the file names its columns by field whatever the files
    loaded the first time named them; a mapping given anyway (the first load's command
    run again with the rejects file) is named in a warning, not an error."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        encoding: str | None = None,
        mapping: ColumnMap | None = None,
    ) -> None:
        self.path = Path(path)
        self.encoding = encoding  # None: UTF-8, as written; --encoding once a program saved it
        self.label = str(self.path)
        self.mapping = mapping if mapping is not None else ColumnMap()
        self._tables: list[str] | None = None

    def warnings(self) -> list[str]:
        return [
            f"{entry.origin}: not used, a rejects file names its columns by field"
            for entry in self.mapping
        ]

    def input_paths(self) -> list[Path]:
        return [self.path.resolve()]

    def expected(self, table: str) -> Expected:

        return Expected(None)  # the file holds every table's rows, mixed: count rows read

    def check(self) -> None:
        for table in self.tables():
            with Opened(self.path, self.encoding) as opened:
                header, _records = csv_records(opened, rejects_columns())
                header.positions(("table", *fields(table)), f" for {table} rows")

    def tables(self) -> list[str]:
        """Return the tables named in the file; raise SourceError for a row naming none.

        A row whose table cannot be read would otherwise be loaded into no table and
        counted nowhere, so it stops the run instead.
        """
        if self._tables is None:
            present: set[str] = set()
            with Opened(self.path, self.encoding) as opened:
                column, records = self._records(opened)
                for line, record, problem in records:
                    name = record[column] if record and column < len(record) else None
                    if name not in registry.tables():
                        what = problem.reason if problem else f"unknown table {name!r}"
                        raise SourceError(
                            f"{self.path}: line {line}: {what} "
                            f"(the table column must be {' or '.join(registry.tables())})"
                        )
                    present.add(name)
            self._tables = [t for t in registry.tables() if t in present]
        return self._tables

    def _records(self, opened: Opened) -> tuple[int, Iterator[Any]]:
        try:
            header, records = csv_records(opened, rejects_columns())
        except SourceError as exc:
            if "the file is empty" in str(exc):
                raise
            raise SourceError(self._not_rejects()) from None
        if "table" not in header.keys:
            raise SourceError(self._not_rejects())
        return header.keys.index("table"), records

    def _not_rejects(self) -> str:
        return (
            f"{self.path}: not a rejects file (it has no 'table' column); to load data "
            f"files, give their directory: --from {self.path.parent}"
        )

    def rows(self, table: str) -> Iterator[SourceRow]:
        with Opened(self.path, self.encoding) as opened:
            header, records = csv_records(opened, rejects_columns())
            column = header.keys.index("table")
            positions = header.positions(fields(table))
            raw = header.keys.index("raw") if "raw" in header.keys else None
            for line, record, problem in records:
                if not record or record[column] != table:
                    continue  # other tables' rows; unreadable ones stopped tables()
                if problem is not None:
                    yield line, problem
                    continue
                values = tuple(unsafe_cell(record[i]) for i in positions)
                text = unsafe_cell(record[raw]) if raw is not None else ""
                if text and not any(v.strip() for v in values):
                    yield line, Malformed(_unsplit(table), text)
                else:
                    yield line, values


def _unsplit(table: str) -> str:
    return (
        "not split into fields yet: copy the values of its raw column into the "
        f"{', '.join(fields(table))} columns"
    )
