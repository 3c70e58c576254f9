"""Which input column feeds which field: ``--map TABLE.FIELD=COLUMN`` and ``--map-file``.

A file's columns (a CSV header's names, a JSONL line's keys) are matched to a table's
fields by name; a mapping says otherwise for some fields: ``users.email=mail`` reads the
field ``email`` of ``users`` from the column ``mail``. A mapped column is matched as any
header name is (``reading.normalized``: any case, spaces around it), in CSV and JSONL
alike; the fields not mapped keep their own names. ``users.note=`` (nothing after ``=``)
leaves a field out: it is not read even where the file has a column of its name, and takes
its empty value; only a field a file may leave out anyway (``rules.may_be_left_out``) can
be. Columns that feed no field are ignored, as they always were, without a warning: a
file exported from another system has many, and none of them is a mistake.

The mapping file is text, one ``TABLE.FIELD=COLUMN`` per line, the very syntax of
``--map``, with blank lines and ``#`` comment lines::

    # the CRM export names its columns its own way
    users.email=mail
    users.name=full name

Text rather than JSON because a person writes it: the line that works on the command line
is copied into the file unchanged, a comment can say why a column is mapped, nothing needs
quoting (a column name is the rest of its line, spaces and all), and each error names its
file and line. ``--map`` given on the command line overrides the file's line for the same
field, so one file serves many loads.

A mapping is data handed to the source (``source_for_path(..., mapping=...)``), checked
against the registry when it is built: an unknown table or field, a field mapped twice,
two fields read from one column, a required field left out: each a ``MappingError`` (a
``SourceError``) naming the flag or the file's line, before any data file is opened. A
mapped column absent from a file's header stops the run when the file is checked, with
the columns found and the closest of them. A rejects file names its columns by field
(``crossdb.rejectsfile``), so a mapping is not used to read one back.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from crossdb import registry
from crossdb.rules import printable
from crossdb.sources.reading import SourceError, Wanted, normalized

logger = logging.getLogger(__name__)

MAX_MAP_FILE = 1 << 20  # bytes: a mapping file holds a line per mapped field


class MappingError(SourceError):
    """A column mapping that cannot be used; raised before any data file is read."""


@dataclass(frozen=True)
class Entry:
    """One line of a mapping: table.field is read from column (None: left out)."""

    table: str
    field: str
    column: str | None
    origin: str  # where it was said, for messages: "--map users.email=mail", "map.txt line 3"


def parse_entry(text: str, origin: str) -> Entry:
    """One ``TABLE.FIELD=COLUMN`` as written; raise MappingError if it is not that shape.
    The table and field are checked later, against the registry (``ColumnMap``)."""
    target, equals, column = text.partition("=")
    table, dot, field = target.strip().rpartition(".")
    if not equals or not dot or not table or not field:
        raise MappingError(f"{origin}: expected TABLE.FIELD=COLUMN{_which_table(target, column)}")
    return Entry(table.strip(), field.strip(), column.strip() or None, origin)


def _which_table(target: str, column: str) -> str:
    """For ``email=mail``, which lacks its table: the table.field it may mean."""
    name = target.strip()
    owners = [t for t in registry.tables() if name in registry.fields(t)]
    if "." in name or not owners:
        return " (e.g. " + _example() + ")"
    return f"; did you mean {printable(owners[0])}.{printable(name)}={printable(column.strip())}?"


def _example() -> str:
    table = next(iter(registry.tables()), "TABLE")
    names = registry.fields(table) if table in registry.specs() else ("FIELD",)
    return f"{table}.{names[-1]}=COLUMN"


def read_map_file(path: str | os.PathLike[str]) -> list[Entry]:
    """The entries of a mapping file (the module docstring's format), each with its line."""
    label = f"--map-file {printable(str(path))}"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MAP_FILE + 1)
    except OSError as exc:
        raise MappingError(f"{label}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_MAP_FILE:
        raise MappingError(
            f"{label}: larger than {MAX_MAP_FILE:,} bytes; a mapping file holds one "
            "TABLE.FIELD=COLUMN line per mapped field"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MappingError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            entries.append(parse_entry(stripped, f"{printable(str(path))} line {number}"))
    return entries


class ColumnMap:
    """Which column feeds each mapped field, checked against the registry when built.

    Empty (``ColumnMap()``) reads every field from the column of its name, as without one.
    """

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, dict[str, Entry]] = {}
        for entry in entries:
            self._add(entry)
        for table in self._entries:
            self._check_columns(table)

    @classmethod
    def from_options(
        cls, maps: Sequence[str] = (), map_file: str | os.PathLike[str] | None = None
    ) -> ColumnMap:
        """The mapping of ``--map-file`` then ``--map`` options; a ``--map`` overrides the
        file's line for the same field (one file, adjusted for one load)."""
        entries: dict[tuple[str, str], Entry] = {}
        if map_file is not None:
            for entry in read_map_file(map_file):
                if (key := (entry.table, entry.field)) in entries:
                    raise MappingError(_twice(entry, entries[key]))
                entries[key] = entry
        given: dict[tuple[str, str], Entry] = {}
        for text in maps:
            entry = parse_entry(text, f"--map {printable(text)}")
            if (key := (entry.table, entry.field)) in given:
                raise MappingError(_twice(entry, given[key]))
            if key in entries:
                logger.info("%s overrides %s", entry.origin, entries.pop(key).origin)
            given[key] = entries[key] = entry  # last, as given last (see _check_columns)
        return cls(entries.values())

    def _add(self, entry: Entry) -> None:
        tables = registry.tables()
        if entry.table not in tables:
            close = difflib.get_close_matches(entry.table, tables, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise MappingError(
                f"{entry.origin}: no table is called '{printable(entry.table)}' "
                f"(tables: {', '.join(tables)}){hint}"
            )
        spec = registry.spec(entry.table)
        if entry.field not in spec.fields:
            close = difflib.get_close_matches(entry.field, spec.fields, n=1)
            hint = f"; did you mean {entry.table}.{close[0]}?" if close else ""
            raise MappingError(
                f"{entry.origin}: {entry.table} has no field '{printable(entry.field)}' "
                f"(its fields: {', '.join(spec.fields)}){hint}"
            )
        if entry.column is None and entry.field not in spec.optional_fields():
            may = ", ".join(spec.optional_fields()) or "none"
            raise MappingError(
                f"{entry.origin}: {entry.table}.{entry.field} cannot be left out, every row "
                f"needs it (fields {entry.table} rows may leave out: {may}); give its column"
            )
        table = self._entries.setdefault(entry.table, {})
        if entry.field in table:
            raise MappingError(_twice(entry, table[entry.field]))
        table[entry.field] = entry

    def _check_columns(self, table: str) -> None:
        """Raise MappingError if one column would feed two fields (compared as header
        names are): a mapped one, or a mapped one and a field read by its own name."""
        feeds: dict[str, str] = {}  # normalized column -> the field it feeds
        for field in registry.fields(table):
            column = self.column(table, field)
            if column is None:
                continue
            other = feeds.setdefault(normalized(column), field)
            if other == field:
                continue
            # name the entry that made the clash: the mapped one of the two, the later if both
            mapped_here = self._entries[table]
            pair = [f for f in mapped_here if f in (field, other)]
            entry = mapped_here[pair[-1]]
            mapped = entry.field
            unmapped = other if mapped == field else field
            if unmapped in self._entries[table]:
                how = f"{table}.{unmapped} is read from it too"
            else:
                how = (
                    f"{table}.{unmapped} is read from it by its name; map {table}.{unmapped} "
                    "to another column, or leave it out with nothing after ="
                )
            raise MappingError(
                f"{entry.origin}: column '{printable(entry.column or column)}' cannot feed "
                f"{table}.{mapped}: {how} (a column feeds one field)"
            )

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        for table in self._entries.values():
            yield from table.values()

    def tables(self) -> list[str]:
        """The tables the mapping says something of, in commit order."""
        return [t for t in registry.tables() if t in self._entries]

    def column(self, table: str, field: str) -> str | None:
        """The column field is read from: its mapped one, its own name, or None (left out)."""
        entry = self._entries.get(table, {}).get(field)
        return field if entry is None else entry.column

    def left_out(self, table: str) -> tuple[int, ...]:
        """The positions, in the table's row, of the fields the mapping leaves out."""
        fields = registry.fields(table)
        return tuple(i for i, f in enumerate(fields) if self.column(table, f) is None)

    def wanted(self, table: str) -> Wanted:
        """What a file of table is read for: the column of each field not left out, in row
        order, those that may be missing, and for messages the field each feeds and the
        option or line that mapped it."""
        spec = registry.spec(table)
        optional = set(spec.optional_fields())
        read = [f for f in spec.fields if self.column(table, f) is not None]
        columns = [self.column(table, f) or f for f in read]
        entries = self._entries.get(table, {})
        return Wanted(
            columns,
            [c for c, f in zip(columns, read, strict=True) if f in optional],
            table=table,
            fields=read,
            origins={
                c: entries[f].origin for c, f in zip(columns, read, strict=True) if f in entries
            },
        )


def _twice(entry: Entry, earlier: Entry) -> str:
    return f"{entry.origin}: {entry.table}.{entry.field} is mapped twice (also by {earlier.origin})"
