"""Where rows come from: the built-in demo files, a directory of CSV/JSONL files, a rejects
file fed back, or a deterministic synthetic stream.

A source yields, per table, ``(line, values)`` pairs: ``values`` holds the raw field values
in the table's column order (``core.tables.fields``), or a ``str`` saying why the line could
not be split into fields (it is rejected with that reason). Rows are streamed, never read
whole, so a source of any size runs in bounded memory. ``check()`` finds every problem that
must stop the run (a missing directory, file or column) before anything is written.
"""

import csv
import json
import random
from decimal import Decimal
from pathlib import Path

from core.tables import TABLES, fields

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
ENCODING = "utf-8-sig"  # tolerate a byte-order mark from spreadsheet exports
MAX_FIELD = 1 << 20  # characters in one CSV field or one JSONL line
csv.field_size_limit(MAX_FIELD)


class SourceError(Exception):
    """A problem with the input as a whole; the run stops before writing anything."""


class FileSource:
    """``users``/``products``/``orders`` ``.csv`` or ``.jsonl`` files in one directory."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.label = str(self.directory)

    def files(self):
        """Return {table: path} for the tables present; raise SourceError on ambiguity."""
        if not self.directory.is_dir():
            raise SourceError(f"--from {self.directory}: no such directory")
        found = {}
        for table in TABLES:
            candidates = [
                p for ext in (".csv", ".jsonl") if (p := self.directory / f"{table}{ext}").exists()
            ]
            if len(candidates) > 1:
                raise SourceError(
                    f"{self.directory}: both {table}.csv and {table}.jsonl exist; keep one"
                )
            if candidates:
                found[table] = candidates[0]
        if not found:
            raise SourceError(
                f"{self.directory}: no users, products or orders file "
                "(expected users.csv, products.csv, orders.csv or .jsonl)"
            )
        return found

    def check(self):
        for table, path in self.files().items():
            if path.suffix == ".csv":
                _csv_columns(path, table)
            else:
                _check_readable(path)

    def tables(self):
        return [t for t in TABLES if t in self.files()]

    def rows(self, table):
        path = self.files()[table]
        if path.suffix == ".csv":
            return _csv_rows(path, table)
        return _jsonl_rows(path, table)


class RejectsFileSource:
    """A rejects CSV written by ``--rejects``, fixed by hand and loaded again.

    Its ``table`` column says where each row goes; a row is read from the columns of that
    table's fields (``name,email`` for users, ``user_id,product_id,quantity`` for orders).
    Line numbers are those of the rejects file, which is the file the person edits.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.label = str(self.path)
        self._tables = None

    def check(self):
        header = _read_header(self.path)
        for table in self.tables():
            missing = [f for f in fields(table) if f not in header]
            if missing:
                raise SourceError(
                    f"{self.path}: missing column(s) {', '.join(missing)} for {table} rows"
                )
            _refuse_duplicates(self.path, header, ("table", *fields(table)))

    def tables(self):
        """Return the tables named in the file; raise SourceError for a row naming none.

        A row whose table cannot be read would otherwise be loaded into no table and
        counted nowhere, so it stops the run instead.
        """
        if self._tables is None:
            header = _read_header(self.path)
            if "table" not in header:
                raise SourceError(f"{self.path}: not a rejects file (it has no 'table' column)")
            column = header.index("table")
            present = set()
            with _open_text(self.path) as handle:
                for line, _end, record in _csv_records(handle):
                    name = (
                        record[column]
                        if isinstance(record, list) and column < len(record)
                        else None
                    )
                    if name not in TABLES:
                        what = record if isinstance(record, str) else f"unknown table {name!r}"
                        raise SourceError(
                            f"{self.path}: line {line}: {what} "
                            "(the table column must be users, products or orders)"
                        )
                    present.add(name)
            self._tables = [t for t in TABLES if t in present]
        return self._tables

    def rows(self, table):
        header = _read_header(self.path)
        column = header.index("table")
        positions = [header.index(f) for f in fields(table)]
        width = len(header)
        with _open_text(self.path) as handle:
            for line, end, record in _csv_records(handle):
                if isinstance(record, str) or record[column] != table:
                    continue  # other tables' rows; unreadable ones stopped check()
                if len(record) != width:
                    yield line, _width_problem(width, record, line, end)
                else:
                    yield line, tuple(record[i] for i in positions)


def _open_text(path):
    try:
        # surrogateescape keeps undecodable bytes, so the validator rejects only that row
        return open(path, encoding=ENCODING, errors="surrogateescape", newline="")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from exc


def _check_readable(path):
    with _open_text(path) as handle:
        try:
            handle.read(1)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from exc


def _header(reader):
    """Return the first non-blank record of reader (the header), or None."""
    for record in reader:
        if record:
            return record
    return None


def _read_header(path):
    with _open_text(path) as handle:
        try:
            header = _header(csv.reader(handle))
        except csv.Error as exc:
            raise SourceError(f"{path}: the header row is not valid CSV ({exc})") from exc
    if not header:
        raise SourceError(f"{path}: the file is empty (expected a header row)")
    return [h.strip() for h in header]


def _refuse_duplicates(path, header, names):
    """Two columns called ``email`` leave no way to know which one is meant."""
    twice = [n for n in names if header.count(n) > 1]
    if twice:
        raise SourceError(f"{path}: column(s) {', '.join(twice)} appear more than once; keep one")


def _csv_columns(path, table):
    """Return the index of each of table's fields in path's header."""
    header = _read_header(path)
    expected = fields(table)
    missing = [f for f in expected if f not in header]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(the header must name {','.join(expected)}; found {','.join(header)})"
        )
    _refuse_duplicates(path, header, expected)
    return [header.index(f) for f in expected], len(header)


def _csv_records(handle):
    """Yield (first line, last line, fields or reason) for each record after the header.

    Blank lines are skipped. A record is numbered by the line it starts on: a quoted field
    may run over several lines, and the first one is where a person looks for the mistake.
    """
    reader = csv.reader(handle)
    _header(reader)
    while True:
        first = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader goes on at the next line
            yield first, reader.line_num, f"not valid CSV ({exc})"
            continue
        if record:
            yield first, reader.line_num, record


def _width_problem(width, record, first, last):
    reason = f"expected {width} fields, got {len(record)}"
    if last > first:
        reason += f" (the record runs from line {first} to line {last}: is a quote left open?)"
    return reason


def _csv_rows(path, table):
    """Yield (first line, values or reason) per record; the loop of _csv_records, inlined
    because a million-row file spends a noticeable share of its reading time in a second
    generator."""
    positions, width = _csv_columns(path, table)
    in_order = positions == list(range(len(positions))) and width == len(positions)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        _header(reader)
        while True:
            first = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader goes on at the next line
                yield first, f"not valid CSV ({exc})"
                continue
            if len(record) != width:
                if record:  # else a blank line
                    yield first, _width_problem(width, record, first, reader.line_num)
            elif in_order:
                yield first, record
            else:
                yield first, [record[i] for i in positions]


JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}


def _jsonl_lines(handle):
    """Yield (line number, text), with None as text for a line too long to read.

    Reading is capped at MAX_FIELD characters per line, as for a CSV field, so one huge line
    cannot take the memory a whole file would.
    """
    number = 0
    while text := handle.readline(MAX_FIELD + 1):
        number += 1
        if len(text) > MAX_FIELD and not text.endswith(("\n", "\r")):
            while (rest := handle.readline(MAX_FIELD)) and not rest.endswith(("\n", "\r")):
                pass
            yield number, None
        else:
            yield number, text


def _jsonl_rows(path, table):
    names = fields(table)
    with _open_text(path) as handle:
        for number, text in _jsonl_lines(handle):
            if text is None:
                yield number, f"the line is longer than {MAX_FIELD:,} characters"
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            except ValueError as exc:  # e.g. a number with more digits than Python converts
                yield number, f"not valid JSON ({exc})"
                continue
            except RecursionError:
                yield number, "not valid JSON (nested too deeply)"
                continue
            if not isinstance(record, dict):
                kind = "null" if record is None else JSON_TYPES.get(type(record), "true/false")
                yield number, f"expected a JSON object, got {kind}"
                continue
            missing = [n for n in names if n not in record]
            if missing:
                yield number, f"missing field(s) {', '.join(missing)}"
                continue
            yield number, tuple(record[n] for n in names)


def demo_source():
    """The built-in demo data: ten rows per table with known rejections."""
    source = FileSource(DEMO_DIR)
    source.label = "demo data"
    return source


def source_for_path(path):
    """A directory of files, or a rejects CSV being fed back."""
    path = Path(path)
    if path.is_file():
        return RejectsFileSource(path)
    return FileSource(path)


FIRST_NAMES = (
    "Alice Bob Charlie David Eve Frank Grace Henry Ivy Jack Karen Liam Mia Noah Olivia "
    "Paul Quinn Rosa Sam Tara Umar Vera Will Xena Yusuf Zoe"
).split()
LAST_NAMES = (
    "Smith Jones Garcia Miller Davis Martin Lopez Clark Lewis Walker Young King Wright "
    "Scott Green Baker Adams Nelson Hill Ramirez Campbell Mitchell Roberts Carter"
).split()
PRODUCT_ADJECTIVES = "Compact Deluxe Ergonomic Portable Smart Wireless Classic Pro".split()
PRODUCT_NOUNS = (
    "Laptop Phone Headphones Monitor Keyboard Mouse Watch Chair Speaker Camera Tablet Lamp"
).split()


class SyntheticSource:
    """Realistic-looking rows generated on the fly; the same seed gives the same rows.

    Ids run from 1, so loading the same command twice stores nothing twice, and every order
    names a generated user and product.
    """

    def __init__(self, users=0, products=0, orders=0, seed=0):
        for name, count in (("users", users), ("products", products), ("orders", orders)):
            if count < 0:
                raise SourceError(f"--{name} must be 0 or more (got {count})")
        if orders and not (users and products):
            raise SourceError("--orders needs --users and --products to reference")
        self.counts = {"users": users, "products": products, "orders": orders}
        self.seed = seed
        self.label = f"synthetic (users={users}, products={products}, orders={orders}, seed={seed})"

    def check(self):
        pass

    def tables(self):
        return [t for t in TABLES if self.counts.get(t)]

    def rows(self, table):
        # One generator per table, seeded from (seed, table): each table is reproducible alone.
        rng = random.Random(f"{self.seed}:{table}")
        return getattr(self, f"_{table}")(rng, self.counts[table])

    def _users(self, rng, count):
        for i in range(1, count + 1):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            yield i, (i, f"{first} {last}", f"{first}.{last}.{i}@example.com".lower())

    def _products(self, rng, count):
        for i in range(1, count + 1):
            name = f"{rng.choice(PRODUCT_ADJECTIVES)} {rng.choice(PRODUCT_NOUNS)}"
            yield i, (i, name, Decimal(rng.randrange(100, 200_000)) / 100)

    def _orders(self, rng, count):
        users, products, random_ = self.counts["users"], self.counts["products"], rng.random
        for i in range(1, count + 1):
            user = int(random_() * users) + 1
            product = int(random_() * products) + 1
            yield i, (i, user, product, int(random_() * 5) + 1)
