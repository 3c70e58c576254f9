"""``TABLE.xlsx``: one sheet of an Excel workbook, streamed, its cells as the text the rules judge.

openpyxl (the ``excel`` extra) reads the sheet in its read-only mode: the sheet's XML is
parsed as it is iterated, a row at a time, and no row is kept once handed on. Two costs are
openpyxl's and stay: the workbook's shared-strings table is held whole (every distinct text
of the workbook, which Excel stores once for all its sheets), and its XML parser keeps each
row's emptied element until the sheet ends, about 80 bytes a row (measured; 80 MB at Excel's
limit of 1,048,576 rows), against some 1,500 bytes a row of four numbers for a workbook
loaded whole. The sheet's declared size is not trusted (``reset_dimensions``): some programs
write a wrong one, and read-only mode would otherwise stop at it without a word.

Which sheet: the one named like the table (``users``, in any case, spaces around it
ignored), else the workbook's only sheet. A workbook of several sheets none of which is
named so stops the run, listing them, rather than loading a guessed sheet. So one workbook
with a sheet per table can be given as ``users.xlsx``, ``orders.xlsx``... (copies or
symlinks of it), each read for its own sheet.

Rows come out in the shape the CSV reader gives (``crossdb.loading.rows``): the header is
the first row with a value, matched as a CSV header is (``reading.CsvHeader``); each later
row that is not empty is ``(row number, values)``, the values the text of the cells under
the wanted columns. A cell Excel typed becomes the text a person sees in it, which then
meets the same rule as that text in a CSV file (``cell_text``): a whole number ``3.0`` is
``3``; a date cell whose format shows a date is ``YYYY-MM-DD``, one that shows a time too is
``2024-05-01T09:30:00`` (Excel has no time zones, so with ``USE_TZ`` it is refused as the
same text is); true and false are ``true`` and ``false``; an empty cell is empty.

Formulas are read as the results the workbook saved with them (``data_only``). A cell under
a wanted column holding an Excel error (``#DIV/0!``) rejects its row naming the cell; so does
a formula saved without its result (files written by programs that do not calculate): an
empty cell and such a formula look alike in the results, so when a wanted cell is empty the
same sheet is read with its formulas, as far as that row (``_Formulas``), only then.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from itertools import islice
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from crossdb.loading.rows import Malformed, SourceRow
from crossdb.rules import printable
from crossdb.sources.reading import CsvHeader, SourceError, Wanted, changed, rewritten

if TYPE_CHECKING:
    from openpyxl.workbook.workbook import Workbook

log = logging.getLogger(__name__)

INSTALL = 'pip install "django-crossdb[excel]"'
OLE2_MAGIC = b"\xd0\xcf\x11\xe0"  # an .xls workbook, or an .xlsx encrypted with a password
# What openpyxl raises for a file that is not a workbook, or a damaged one: a ZIP it cannot
# open or inflate, a part missing from it (KeyError), XML that does not parse (SyntaxError:
# ElementTree's and lxml's errors), or parts that parse into values openpyxl refuses.
BROKEN = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    SyntaxError,
)
EXCEL_DIGITS = 15  # significant digits Excel keeps, shows and saves to CSV


def _openpyxl(path: Path) -> ModuleType:
    """openpyxl, imported only when a workbook is read: it is an optional extra."""
    try:
        import openpyxl
    except ImportError as exc:
        raise SourceError(f"{path}: reading .xlsx files needs openpyxl: {INSTALL}") from exc
    return openpyxl


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return printable(text)


def _load(raw: Any, path: Path, data_only: bool) -> Workbook:
    """The workbook in raw (an open binary file), read-only; SourceError if it is not one."""
    openpyxl = _openpyxl(path)
    head = raw.peek(len(OLE2_MAGIC))[: len(OLE2_MAGIC)]
    if head == OLE2_MAGIC:
        raise SourceError(
            f"{path}: an old .xls workbook or a password-protected one, not .xlsx; "
            "save it as an Excel Workbook (.xlsx) without a password"
        )
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            workbook = openpyxl.load_workbook(raw, read_only=True, data_only=data_only)
        except BROKEN as exc:
            raise SourceError(f"{path}: not a readable .xlsx workbook ({_reason(exc)})") from exc
    for warning in said:  # "no default style", unsupported extensions: nothing a row needs
        log.info("%s: openpyxl: %s", path, warning.message)
    return workbook


def _worksheet(workbook: Workbook, path: Path, table: str) -> Any:
    """The sheet named like table, else the only sheet; SourceError if neither exists."""
    sheets = workbook.worksheets  # chart sheets hold no rows and are left out
    named = [s for s in sheets if s.title.strip().casefold() == table]
    if len(named) == 1:
        return named[0]
    titles = ", ".join(repr(printable(s.title)) for s in (named or sheets))
    if named:
        raise SourceError(f"{path}: sheets {titles} are all named like {table}; keep one")
    if len(sheets) == 1:
        return sheets[0]
    if not sheets:
        raise SourceError(f"{path}: the workbook has no worksheet")
    raise SourceError(
        f"{path}: {len(sheets)} sheets ({titles}) and none is named {table}; "
        f"name the sheet to load {table}, or keep only that sheet"
    )


# --- cells to text --------------------------------------------------------------------------


def number_text(number: float) -> str:
    """A float cell as the number Excel shows and saves to CSV, in plain notation.

    Excel keeps 15 significant digits: ``=0.1+0.2`` is saved as 0.30000000000000004 and
    shown as 0.3, and a price that reads 0.3 in the sheet should pass as 0.3 does in a CSV
    file (``repr`` would refuse it for its places). A whole number stored as a float (ids
    from a program's float column) that a float holds exactly keeps every digit. No
    exponent: the decimal rule refuses one, and Excel shows ``1E-05`` for what was typed
    ``0.00001``.
    """
    if not math.isfinite(number):
        return repr(number)  # Excel cannot store one; the rules say it is not a number
    if number.is_integer() and abs(number) <= 2**53:
        return str(int(number))
    text = format(Decimal(format(number, f".{EXCEL_DIGITS}g")), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def moment_text(value: datetime.datetime, number_format: str) -> str:
    """A date cell as its format shows it: the day alone when the format has no time
    (Excel stores every date as a moment), else the ISO date and time, without a zone."""
    from openpyxl.styles.numbers import is_datetime

    if is_datetime(number_format) == "date":
        return value.date().isoformat()
    return value.isoformat()


def cell_text(cell: Any) -> str:
    """The text of one cell (a read-only cell of openpyxl), as a CSV file would hold it."""
    value = cell.value
    kind = type(value)
    if kind is str:
        return value
    if value is None:
        return ""
    if kind is int:
        return str(value)
    if kind is float:
        return number_text(value)
    if kind is bool:
        return "true" if value else "false"  # a spelling every boolean rule takes
    if kind is datetime.datetime:
        return moment_text(value, cell.number_format)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)  # a duration ([h]:mm): no rule takes one; text rules see it as shown


def _coordinate(column: int, row: int) -> str:
    from openpyxl.utils import get_column_letter

    return f"{get_column_letter(column + 1)}{row}"


# --- the sheet ------------------------------------------------------------------------------


class ExcelSheet:
    """One table's sheet of a workbook, open for reading; closes the workbook when done.

    ``path`` and ``at_open`` (the file's ``os.stat`` when it was opened) let the file source
    say when the file changed while it was read, as for a CSV file; ``position()`` is the
    number of the sheet row last read, for progress in rows.
    """

    def __init__(self, path: Path, table: str) -> None:
        self.path = path
        self.table = table
        self.row = 0
        try:
            self.raw = open(path, "rb")  # noqa: SIM115 - closed by close(), after streaming
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from exc
        self.at_open = os.fstat(self.raw.fileno())
        self._formulas: _Formulas | None = None
        try:
            self.workbook = _load(self.raw, path, data_only=True)
            from openpyxl.cell.read_only import EMPTY_CELL

            # openpyxl's filler for a cell the file does not hold (no formula can be there)
            self._filler = EMPTY_CELL
        except SourceError:
            self.raw.close()
            raise
        try:
            self.sheet = _worksheet(self.workbook, path, table)
        except SourceError:
            self.close()
            raise
        # The size the file declares (None when it declares none), for the progress bar;
        # the rows themselves are read to their real end whatever it says.
        self.declared_rows: int | None = self.sheet.max_row
        self.sheet.reset_dimensions()
        log.debug("%s: reading sheet %r for %s", path, self.sheet.title, table)

    def position(self) -> int:
        return self.row

    def close(self) -> None:
        if self._formulas is not None:
            self._formulas.close()
        self.workbook.close()
        self.raw.close()

    def __enter__(self) -> ExcelSheet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _rows(self) -> Iterator[tuple[int, Sequence[Any]]]:
        """(row number, cells) of every row of the sheet; SourceError if it is damaged."""
        rows = enumerate(self.sheet.iter_rows(), 1)
        while True:
            try:
                numbered = next(rows, None)
            except BROKEN as exc:
                raise SourceError(
                    f"{self.path}: cannot read the sheet past row {self.row} ({_reason(exc)})"
                ) from exc
            if numbered is None:
                break
            self.row = numbered[0]
            yield numbered
        # as for a CSV file (``Opened.check_unchanged``): rows written meanwhile are not read
        if problem := changed(self.path, self.at_open, os.fstat(self.raw.fileno())):
            raise SourceError(problem)

    def header(self, rows: Iterator[tuple[int, Sequence[Any]]]) -> CsvHeader:
        """The first row with a value, as a CSV header; SourceError if the sheet has none."""
        for number, cells in rows:
            names = [cell_text(cell).strip() for cell in cells]
            while names and not names[-1]:
                names.pop()  # cells formatted beyond the table's last column
            if names:
                return CsvHeader(self.path, names, ",", number)
        raise SourceError(
            f"{self.path}: sheet {printable(self.sheet.title)!r} is empty (expected a header row)"
        )

    def records(self, wanted: Wanted) -> Iterator[SourceRow]:
        """(row number, values) per row after the header that is not empty."""
        rows = self._rows()
        header = self.header(rows)
        positions = list(zip(wanted, header.positions(wanted), strict=True))
        width = len(header.names)
        for number, cells in rows:
            record = self._record(number, cells, positions, width)
            if record is not None:
                yield record

    def _record(
        self,
        number: int,
        cells: Sequence[Any],
        positions: list[tuple[str, int | None]],
        width: int,
    ) -> SourceRow | None:
        """One row's (number, values); a Malformed naming its cells that hold an error or
        a formula without its result; None for an empty row."""
        values: list[str | None] = []
        errors: list[str] = []
        empty: list[tuple[str, int]] = []  # wanted cells written in the file, with no value
        for field, position in positions:
            if position is None:
                values.append(None)  # an optional column the sheet lacks
                continue
            cell = cells[position] if position < len(cells) else None
            if cell is None or cell.value is None:
                values.append("")
                if cell is not None and cell is not self._filler:
                    empty.append((field, position))  # maybe a formula without its result
                continue
            if cell.data_type == "e":
                where = _coordinate(position, number)
                errors.append(f"cell {where} ({field}) holds the error {printable(cell.value)}")
            values.append(cell_text(cell))
        errors.extend(
            f"cell {_coordinate(p, number)} ({field}) holds a formula saved without its "
            "result (open the workbook in Excel or LibreOffice and save it)"
            for field, p in empty
            if self._formula_at(number, p)
        )
        if errors:
            texts = [cell_text(cell) for cell in islice(cells, width)]
            return number, Malformed("; ".join(errors), rewritten(texts, ","))
        if not any(values) and all(cell.value in (None, "") for cell in cells):
            return None  # an empty row, as a blank line of a CSV file
        return number, tuple(values)

    def _formula_at(self, number: int, position: int) -> bool:
        if self._formulas is None:
            log.debug(
                "%s: an empty cell at row %d: reading the sheet's formulas", self.path, number
            )
            self._formulas = _Formulas(self)
        return self._formulas.at(number, position)


class _Formulas:
    """The same sheet read with its formulas (``data_only=False``), only as far as asked.

    An empty result and a formula saved without one are both None in the results; read
    with formulas, the second is the formula's text. Opened at the first empty wanted cell,
    so a sheet without one is parsed once.
    """

    def __init__(self, sheet: ExcelSheet) -> None:
        self.path = sheet.path
        try:
            self.raw = open(sheet.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise SourceError(f"{sheet.path}: cannot read ({exc.strerror})") from exc
        if problem := changed(sheet.path, sheet.at_open, os.fstat(self.raw.fileno())):
            self.raw.close()
            raise SourceError(problem)
        try:
            self.workbook = _load(self.raw, sheet.path, data_only=False)
        except SourceError:
            self.raw.close()
            raise
        worksheet = self.workbook[sheet.sheet.title]
        worksheet.reset_dimensions()
        self.rows = enumerate(worksheet.iter_rows(values_only=True), 1)
        self.number = 0
        self.values: Sequence[Any] = ()

    def at(self, number: int, position: int) -> bool:
        """Whether the cell at row number, column position holds a formula."""
        try:
            while self.number < number:
                self.number, self.values = next(self.rows, (number, ()))
        except BROKEN as exc:
            raise SourceError(
                f"{self.path}: cannot read the sheet's formulas ({_reason(exc)})"
            ) from exc
        return position < len(self.values) and self.values[position] is not None

    def close(self) -> None:
        self.workbook.close()
        self.raw.close()


def excel_rows(
    path: Path, table: str, wanted: Wanted, track: Callable[[ExcelSheet], None] | None = None
) -> Iterator[SourceRow]:
    """(row number, values) per row of table's sheet in the workbook at path;
    ``track(sheet)`` is told the open sheet (for progress and the end-of-run check)."""
    with ExcelSheet(path, table) as sheet:
        if track is not None:
            track(sheet)
        yield from sheet.records(wanted)


def check_excel(path: Path, table: str, wanted: Wanted) -> int | None:
    """Raise SourceError unless the workbook opens, has table's sheet, and its header names
    the wanted columns; return the rows the sheet declares (None: it declares none)."""
    with ExcelSheet(path, table) as sheet:
        sheet.header(sheet._rows()).positions(wanted)
        return sheet.declared_rows
