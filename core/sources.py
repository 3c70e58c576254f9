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
csv.field_size_limit(1 << 20)


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
    """A rejects CSV written by ``--rejects``, fixed by hand and loaded again."""

    def __init__(self, path):
        self.path = Path(path)
        self.label = str(self.path)

    def check(self):
        header = _read_header(self.path)
        if "table" not in header:
            raise SourceError(f"{self.path}: not a rejects file (it has no 'table' column)")
        for table in self.tables():
            missing = [f for f in fields(table) if f not in header]
            if missing:
                raise SourceError(
                    f"{self.path}: missing column(s) {', '.join(missing)} for {table} rows"
                )

    def tables(self):
        present = set()
        with _open_text(self.path) as handle:
            for record in csv.DictReader(handle):
                present.add(record.get("table"))
        return [t for t in TABLES if t in present]

    def rows(self, table):
        names = fields(table)
        with _open_text(self.path) as handle:
            reader = csv.DictReader(handle)
            for record in reader:
                if record.get("table") == table:
                    yield reader.line_num, tuple(record.get(n) for n in names)


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


def _read_header(path):
    with _open_text(path) as handle:
        try:
            header = next(csv.reader(handle), None)
        except csv.Error as exc:
            raise SourceError(f"{path}: the header row is not valid CSV ({exc})") from exc
    if not header:
        raise SourceError(f"{path}: the file is empty (expected a header row)")
    return [h.strip() for h in header]


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
    return [header.index(f) for f in expected], len(header)


def _csv_rows(path, table):
    positions, width = _csv_columns(path, table)
    in_order = positions == list(range(len(positions))) and width == len(positions)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, f"not valid CSV ({exc})"
                continue
            if len(record) != width:
                if not record:
                    continue  # a blank line
                yield reader.line_num, f"expected {width} fields, got {len(record)}"
            elif in_order:
                yield reader.line_num, record
            else:
                yield reader.line_num, [record[i] for i in positions]


def _jsonl_rows(path, table):
    names = fields(table)
    with _open_text(path) as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                yield number, f"not valid JSON ({exc})"
                continue
            if not isinstance(record, dict):
                yield number, "expected a JSON object"
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
        return [t for t in TABLES if self.counts[t]]

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
