"""One row, one verdict, for every kind of field: the kinds tables (``tests/kinds``: shelves
with a UUID key, items with a text key, a float, a boolean, a datetime, a nullable date and
UUID, a blank text, an integer with a default and two references to shelves) loaded as CSV,
as JSONL and as a rejects file give the same stored rows and the same rejections, and both
equal a plain reference of the rules (``tests/reference_rules_kinds.py``).

The property test draws valid and invalid values of every field (bounds and huge numbers,
nan, inf and 1e400, every spelling of a boolean, impossible days, times without a zone or
with an impossible offset, UUIDs in every accepted form and look-alikes, text too long or
with control characters, empty values and columns left out for the optional fields), ids
written twice with the same or other data, and items naming stored, refused and missing
shelves; JSONL files sometimes write empty values as null and booleans and small whole
numbers as JSON's own. A rejection is compared by what it blames: the fields it names, and
whether a parent was refused in the run or never given.

Its negative controls patch a divergent rule in and show the property fails. The examples
at the end are the divergences it found, fixed in crossdb and kept as tests.
"""

import calendar
import csv
import datetime
import json
import os
import re
import uuid
from collections import Counter

import pytest
from crossdb import rules as crossdb_rules
from crossdb.loading import load
from crossdb.rejectsfile import rejects_columns, safe_cell
from crossdb.sources import FileSource, RejectsFileSource
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests import reference_rules_kinds as rules
from tests import test_verdicts
from tests.conftest import all_databases
from tests.kinds.models import Item, Shelf

FIELDS = rules.FIELDS
MODELS = {"shelves": Shelf, "items": Item}
FORMATS = ("csv", "jsonl", "rejects")

# --- Inputs -------------------------------------------------------------------------------

SHELVES = [
    uuid.UUID("6f1c2a52-8d3e-4b7a-9c10-2f3e4d5a6b7c"),
    uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
    uuid.UUID("ffffffff-0000-4000-8000-00000000abcd"),
]
MISSING = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")  # never stored, never loaded
UUID_FORMS = [
    str,
    lambda u: str(u).upper(),
    lambda u: u.hex,
    lambda u: f"{{{u}}}",
    lambda u: f"urn:uuid:{u}",
    lambda u: f" {u} ",
]
# Look-alikes of a UUID, each one mistake away from a form above.
BAD_UUID_FORMS = [
    lambda u: str(u)[:-1],  # a digit short
    lambda u: f"{u}0",  # a digit too many
    lambda u: str(u).replace("a", "g", 1) if "a" in str(u) else "g" + str(u)[1:],
    lambda u: "0x" + u.hex[2:],  # 0x and 30 digits: int(..., 16) reads it
    lambda u: "+" + u.hex[1:],  # a sign and 31 digits
    lambda u: "-".join(u.hex[i : i + 4] for i in range(0, 32, 4)),  # hyphens misplaced
    lambda u: u.hex[:8] + "--" + u.hex[8:],
    lambda u: f"{{{{{u}}}}}",  # two pairs of braces
    lambda u: f"{{{u}",  # an unbalanced brace
    lambda u: f"urn:uuid:{{{u}}}",
    lambda u: f"{{ {u.hex[1:]}}}",  # a space and 31 digits inside braces
]
BAD_UUIDS = ["", " ", "x", "urn:uuid:", "12345"]

LABELS = ["Top", " Top ", "A" * 40, "Zoë", "a\tb", "=1+2", "'quoted", "-1", "Ω"]
BAD_LABELS = ["A" * 41, "", "  ", "a\nb", "a\rb", "a\x00", "a\x85", "a\u2028b", "a\x1bb"]
DATES = ["2024-02-29", "2023-12-31", " 2024-01-01 ", "0001-01-01", "9999-12-31"]
BAD_DATES = ["2023-02-29", "2024-13-01", "2024-04-31", "2024-00-10", "2024-5-1", "20240501"]
BAD_DATES += ["2024/05/01", "2024-05-01T00:00", "x", "", "٢٠٢٤-٠١-٠١"]  # Arabic digits
BOOLEANS = ["true", "false", "True", "FALSE", "t", "F", "yes", "No", "y", "N", "1", "0"]
BOOLEANS += [" yes "]
BAD_BOOLEANS = ["maybe", "2", "on", "off", "tru", "", "yes please", "-1", "1.0", "nil"]
MOMENTS = [
    "2024-05-01T09:30:00+02:00",
    "2024-05-01T07:30:00Z",  # the same moment
    "2024-05-01 09:30z",
    "2024-05-01T09:30:00.5+0200",
    "2024-05-01T09:30:00.123456-01:30",
    "2024-02-29T23:59:59+00:00",
    "2024-12-31T23:30:00-01:00",  # next year in UTC
    "0001-01-01T01:00:00+01:00",  # the first moment there is
]
BAD_MOMENTS = ["2024-05-01T09:30:00", "2024-05-01 09:30", "2024-05-01", "", "now"]  # no zone
BAD_MOMENTS += ["2024-02-30T10:00Z", "2024-05-01T24:00Z", "2024-05-01T09:60Z"]
BAD_MOMENTS += ["2024-05-01T09:30:60Z", "2024-05-01T9:30Z", "2024-05-01T09:30:00.1234567Z"]
BAD_MOMENTS += ["2024-05-01T09:30:00+24:00", "2024-05-01T09:30:00+05:75"]  # no such offset
BAD_MOMENTS += ["2024-05-01T09:30:00+00:60", "2024-05-01T09:30:00+02"]
BAD_MOMENTS += ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"]  # not in UTC's years
WEIGHTS = ["0", "1000", "1.5", " 2.5 ", "1e3", "1E-3", ".5", "5.", "-0", "+7", "1e-400"]
WEIGHTS += ["999.9999999999999", "0.1"]
BAD_WEIGHTS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1000.0000001"]
BAD_WEIGHTS += ["-0.001", "", "x", "1,5", "1_0", "0x10", "1e", "$5", "١", "9" * 400]
COUNTS = ["", " ", "0", "-5", "+5", "3.0", " 4 ", "2147483647", "-2147483648", "007", "5."]
BAD_COUNTS = ["2147483648", "-2147483649", "3.5", "1e1", "x", "9" * 5000, "٣", "1,000"]
BAD_COUNTS += ["1" + "0" * 150]
NOTES = ["", " ", "note", " pad ", "a\tb", "x" * 300, "Zoë; =1"]
BAD_NOTES = ["a\nb", "a\x00", "a\x9b", "a\u2029"]
CODES = ["A1", "A2", "B1", " A1 ", "a1", "C" * 12, "Ω1", "x-1", "'q"]
BAD_CODES = ["", "  ", "C" * 13, "A\n1", "A\x01"]


def sometimes(valid, invalid, one_in=7):
    """A value from invalid one time in one_in, else from valid."""
    valid = st.sampled_from(valid) if isinstance(valid, list) else valid
    invalid = st.sampled_from(invalid) if isinstance(invalid, list) else invalid
    # hypothesis favours small numbers: 0 picks the valid value
    return st.integers(0, one_in - 1).flatmap(lambda n: invalid if n == one_in - 1 else valid)


def uuids_of(pool, bad=True, one_in=7):
    """A UUID of pool in an accepted form; with bad, one time in one_in a look-alike."""
    valid = st.builds(lambda u, form: form(u), st.sampled_from(pool), st.sampled_from(UUID_FORMS))
    if not bad:
        return valid
    wrong = st.builds(
        lambda u, form: form(u), st.sampled_from(pool), st.sampled_from(BAD_UUID_FORMS)
    )
    return sometimes(valid, st.one_of(wrong, st.sampled_from(BAD_UUIDS)), one_in)


SHELF_ROW = st.tuples(
    uuids_of(SHELVES, one_in=10),
    sometimes(LABELS, BAD_LABELS, 10),
    sometimes(DATES, BAD_DATES, 10),
    sometimes(BOOLEANS + ["", " "], [b for b in BAD_BOOLEANS if b], 10),
)


def item_row(parents):
    """An item naming shelves of parents (UUIDs), now and then a look-alike or one nobody
    gives (``MISSING``)."""
    shelf = sometimes(uuids_of(parents, one_in=15), uuids_of([MISSING], bad=False), 8)
    return st.tuples(
        sometimes(CODES, BAD_CODES, 15),
        shelf,
        st.one_of(st.just(""), shelf),
        sometimes(WEIGHTS, BAD_WEIGHTS, 15),
        sometimes(BOOLEANS, BAD_BOOLEANS, 15),
        sometimes(MOMENTS, BAD_MOMENTS, 8),
        sometimes(DATES + ["", " "], [d for d in BAD_DATES if d.strip()], 15),
        st.one_of(st.just(""), uuids_of([*SHELVES, MISSING], one_in=8)),
        sometimes(NOTES, BAD_NOTES, 15),
        sometimes(COUNTS, BAD_COUNTS, 15),
    )


def left_out(table):
    """Some of table's optional fields, which the files of a case leave out."""
    optional = sorted(rules.DEFAULTS[table])
    return st.lists(st.booleans(), min_size=len(optional), max_size=len(optional)).map(
        lambda flags: frozenset(f for f, out in zip(optional, flags, strict=True) if out)
    )


@st.composite
def table_rows(draw, row, min_size, max_size):
    """Rows of one table, some of them repeating an earlier row's id: with the same data
    (the same row written twice), with one field changed, or with other data."""
    rows = draw(st.lists(row, min_size=min_size, max_size=max_size - 4))
    for _ in range(draw(st.integers(0, 4))):
        base = rows[draw(st.integers(0, len(rows) - 1))]
        other = draw(row)
        changed = draw(st.sampled_from(["none", "one", "all"]))
        if changed == "one":
            field = draw(st.integers(1, len(base) - 1))
            again = base[:field] + other[field : field + 1] + base[field + 1 :]
        else:
            again = base if changed == "none" else (base[0], *other[1:])
        rows.insert(draw(st.integers(0, len(rows))), again)
    return rows


@st.composite
def stored_rows(draw):
    """A few valid rows stored before the load: shelves, and items naming them."""
    stored = {"shelves": {}, "items": {}}
    for values in draw(st.lists(SHELF_ROW, max_size=2)):
        row, bad = rules.clean("shelves", values)
        if not bad:
            stored["shelves"].setdefault(row[0], row)
    if stored["shelves"]:
        names = sorted(stored["shelves"])
        for values in draw(st.lists(item_row(names), max_size=2)):
            row, bad = rules.clean("items", values)
            spare = row[2]
            if not bad and row[1] in names and (spare is None or spare in names):
                stored["items"].setdefault(row[0], row)
    return {t: list(rows.values()) for t, rows in stored.items()}


@st.composite
def cases(draw):
    """Rows of shelves and items, the optional columns their files leave out, how JSONL
    writes them, rows stored before the load and a batch size."""
    stored = draw(st.one_of(st.just({}), stored_rows()))
    rows = {"shelves": draw(table_rows(SHELF_ROW, 1, 8))}
    named = {r[0] for r in stored.get("shelves", ())}  # the shelves stored or given, if valid
    for values in rows["shelves"]:
        row, _bad = rules.clean("shelves", values)
        named.add(row[0]) if row[0] is not None else None
    parents = sorted(named or SHELVES)
    rows["items"] = draw(table_rows(item_row(parents), 4, 16))
    omitted = {
        t: draw(left_out(t)) if draw(st.integers(0, 3)) == 0 else frozenset() for t in FIELDS
    }
    for table, out in omitted.items():
        at = [FIELDS[table].index(f) for f in out]
        rows[table] = [tuple(None if i in at else v for i, v in enumerate(r)) for r in rows[table]]
    return {
        "rows": rows,
        "stored": stored,
        "native_json": draw(st.booleans()),
        "batch_size": draw(st.sampled_from([1, 2, 3, 50])),
    }


# --- Writing one input in each format -----------------------------------------------------


def present_fields(table, table_rows):
    """The fields a table's files give: those no row leaves out (None)."""
    return [f for i, f in enumerate(FIELDS[table]) if not any(r[i] is None for r in table_rows)]


def write_csv(directory, rows, native_json=False):
    """Write one CSV per table, without the columns left out; return {(table, line): index}."""
    lines = {}
    for table, table_rows in rows.items():
        given = present_fields(table, table_rows)
        at = [FIELDS[table].index(f) for f in given]
        path = directory / f"{table}.csv"
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(given)
            writer.writerows([values[i] for i in at] for values in table_rows)
        for index, (line, _record) in enumerate(test_verdicts.record_lines(path)):
            lines[table, line] = index
    return lines


BOOLEAN_FIELDS = {"heated", "fragile"}


def json_value(field, value, native):
    """value as JSONL writes it: a string, or with native, JSON's own null, true, false or
    number where the text is one of those."""
    if not native:
        return value
    if value == "":
        return None
    if field in BOOLEAN_FIELDS and value in ("true", "false"):
        return value == "true"
    if field == "count" and re.fullmatch("-?[1-9][0-9]{0,8}", value):
        return int(value)
    return value


def write_jsonl(directory, rows, native_json=False):
    """Write one JSONL file per table, leaving out the keys left out; return
    {(table, line): index}."""
    lines = {}
    for table, table_rows in rows.items():
        with open(directory / f"{table}.jsonl", "w", encoding="utf-8") as handle:
            for index, values in enumerate(table_rows):
                record = {
                    f: json_value(f, v, native_json)
                    for f, v in zip(FIELDS[table], values, strict=True)
                    if v is not None
                }
                handle.write(json.dumps(record) + "\n")
                lines[table, index + 1] = index
    return lines


def write_rejects(directory, rows, native_json=False):
    """Write one rejects CSV as ``LoadResult.write_rejects`` does (every column, cells made
    spreadsheet-safe), children first and interleaved; return {(table, line): index}."""
    path = directory / "rejects.csv"
    interleaved = []
    for index in range(max((len(r) for r in rows.values()), default=0)):
        for table in ("items", "shelves"):
            if index < len(rows.get(table, ())):
                interleaved.append((table, index, rows[table][index]))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, rejects_columns())
        writer.writeheader()
        for table, index, values in interleaved:
            fields = {
                f: safe_cell("" if v is None else v)
                for f, v in zip(FIELDS[table], values, strict=True)
            }
            writer.writerow({"table": table, "line": index + 2, "reason": "fixed"} | fields)
    lines = {}
    for (table, index, _values), (line, record) in zip(
        interleaved, test_verdicts.record_lines(path), strict=True
    ):
        assert record[0] == table
        lines[table, line] = index
    return lines


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "rejects": write_rejects}


def source_for(fmt, directory):
    if fmt == "rejects":
        return RejectsFileSource(directory / "rejects.csv")
    return FileSource(directory)


# --- Loading and reading back -------------------------------------------------------------


def store(stored):
    for table in FIELDS:  # parents first
        for row in stored.get(table, ()):
            MODELS[table].objects.create(**dict(zip(FIELDS[table], row, strict=True)))


def dump():
    """Every stored row of the kinds tables, {table: {id: row}}."""
    return {
        table: {r[0]: r for r in MODELS[table].objects.values_list(*FIELDS[table])}
        for table in FIELDS
    }


NAMES = sorted({*FIELDS["shelves"], *FIELDS["items"], rules.PARENT_NOUN}, key=len, reverse=True)
PARTS = re.compile(f"; (?=(?:{'|'.join(NAMES)}) )")
CONFLICT = re.compile(r"(\w+) .* is already stored with different data \(", re.DOTALL)


def blamed(reason):
    """What a rejection's reason blames, as the reference names it: the sorted fields, and
    "shelf (missing)" or "shelf (rejected)" for each parent that is not stored."""
    if conflict := CONFLICT.match(reason):
        return (conflict[1],)
    named = []
    reason = reason.removesuffix(" (an unbalanced quote?)")  # a CSV record over two lines
    for part in PARTS.split(reason):
        first = part.split(" ", 1)[0]
        if part.endswith("was rejected in this run"):
            first += " (rejected)"
        elif part.endswith("does not exist"):
            first += " (missing)"
        named.append(first)
    return tuple(sorted(named))


def outcome(result, lines):
    """The verdicts of a LoadResult: counts per table and the rejected rows by position."""
    rejected = Counter()
    for r in result.rejections:
        index = lines.get((r.table, int(r.line))) if r.line is not None else None
        rejected[r.table, index, r.id, blamed(r.reason)] += 1
    counts = {
        t: (result.tables[t].stored, result.tables[t].present, result.tables[t].rejected)
        for t in FIELDS
        if t in result.tables
    }
    return counts, rejected


def expected_outcome(rows, stored):
    final, verdicts = rules.reference_load(rows, stored)
    rejected = Counter()
    counts = {}
    for table, table_verdicts in verdicts.items():
        kinds = Counter(v[0] for v in table_verdicts)
        for index, v in enumerate(table_verdicts):
            if v[0] == "rejected":
                rejected[table, index, v[1], v[2]] += 1
        counts[table] = (kinds["stored"], kinds["present"], kinds["rejected"])
    return final, counts, rejected


def load_as(fmt, case, directory):
    """Load the case's rows written as fmt into emptied tables; return
    (dump, counts, rejected, result)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = WRITERS[fmt](directory, case["rows"], case.get("native_json", False))
    test_verdicts.empty_tables()
    store(case.get("stored") or {})
    source = source_for(fmt, directory)
    source.check()
    result = load.load(source, batch_size=case.get("batch_size", 3))
    counts, rejected = outcome(result, lines)
    return dump(), counts, rejected, result


def check_one_verdict(case, directory):
    """The property: every format gives the same verdicts, and they are the rules' verdicts."""
    rows = case["rows"]
    got = {fmt: load_as(fmt, case, directory / fmt) for fmt in FORMATS}
    reasons = {fmt: "\n".join(map(str, g[3].sorted_rejections())) for fmt, g in got.items()}
    counts = {fmt: {t: g[1].get(t) for t in FIELDS if rows.get(t)} for fmt, g in got.items()}
    for fmt in FORMATS[1:]:
        where = f"the formats disagree: csv and {fmt} give different"
        assert got[fmt][0] == got["csv"][0], f"{where} stored rows\n{reasons}"
        assert got[fmt][2] == got["csv"][2], f"{where} rejections\n{reasons}"
        assert counts[fmt] == counts["csv"], f"{where} counts\n{reasons}"
    want_rows, want_counts, want_rejected = expected_outcome(rows, case.get("stored") or {})
    want_counts = {t: c for t, c in want_counts.items() if rows.get(t)}
    where = "every format differs from the reference rules:"
    assert got["csv"][0] == want_rows, f"{where} stored rows\n{reasons['csv']}"
    assert got["csv"][2] == want_rejected, (
        f"{where} rejected (table, index, id, blamed)\n" + (reasons["csv"])
    )
    assert counts["csv"] == want_counts, f"{where} (stored, present, rejected) per table"


@pytest.fixture
def case_dir(tmp_path_factory):
    """A fresh directory per example (the property runs many examples in one test)."""
    return lambda: tmp_path_factory.mktemp("kinds")


PROPERTY = settings(
    max_examples=int(os.environ.get("MULTIDS_VERDICT_KINDS_EXAMPLES", "12")),
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its example
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def verdict_property(case_dir, **overrides):
    """The property as a hypothesis test, runnable inside a django_db test (and again,
    with a divergent rule patched in, by the negative controls)."""

    @settings(PROPERTY, **overrides)
    @given(case=cases())
    def run(case):
        _rows, counts, rejected = expected_outcome(case["rows"], case.get("stored") or {})
        for table, (stored, present, _rejected) in counts.items():  # --hypothesis-show-statistics
            event(f"{table}: {bool(stored)} stored, {bool(present)} present")
        for table, _index, _id, named in rejected:
            for name in named:
                event(f"{table} rejected for {name}")
        check_one_verdict(case, case_dir())

    return run


@all_databases
def test_every_format_gives_the_verdicts_of_the_rules_for_every_kind_of_field(case_dir):
    verdict_property(case_dir)()


# --- Negative controls: a divergent rule makes the property fail ---------------------------

NEGATIVE = {
    "derandomize": True,  # the same examples every run, so the control cannot pass by luck
    "max_examples": 40,
    "phases": [Phase.generate],  # the first counterexample is enough; no shrinking
    "report_multiple_bugs": False,
}
DIFFERS = "every format differs from the reference rules"


@all_databases
def test_a_boolean_rule_that_reads_maybe_as_true_fails_the_property(case_dir, monkeypatch):
    monkeypatch.setattr(crossdb_rules, "TRUE_WORDS", crossdb_rules.TRUE_WORDS | {"maybe"})
    with pytest.raises(AssertionError, match=DIFFERS):
        verdict_property(case_dir, **NEGATIVE)()


@all_databases
def test_a_date_rule_that_ignores_a_bad_day_fails_the_property(case_dir, monkeypatch):
    """2023-02-29 and 2024-04-31 are read as the last day of their month."""
    real_day = crossdb_rules._real_day

    def lenient(field, text, value):
        try:
            return real_day(field, text, value)
        except crossdb_rules.Invalid:
            year, month, _day = map(int, text.split("-"))
            if not 1 <= month <= 12:
                raise
            return datetime.date(year, month, calendar.monthrange(year, month)[1])

    monkeypatch.setattr(crossdb_rules, "_real_day", lenient)
    with pytest.raises(AssertionError, match=DIFFERS):
        verdict_property(case_dir, **NEGATIVE)()


@all_databases
def test_a_uuid_rule_that_drops_the_hyphen_checks_fails_the_property(case_dir, monkeypatch):
    """Hyphens anywhere, as ``uuid.UUID`` reads them: a look-alike names another shelf,
    or is stored as a shelf's id, where the rules refuse it."""
    hyphens_anywhere = "-*(?:[0-9a-fA-F]-*){32}"
    forms = f"(?:urn:uuid:)?(?P<hex>{hyphens_anywhere})|\\{{(?P<braced>{hyphens_anywhere})\\}}"
    monkeypatch.setattr(crossdb_rules, "UUID_RE", re.compile(forms))
    with pytest.raises(AssertionError, match=DIFFERS):
        verdict_property(case_dir, **NEGATIVE)()


# --- Cases where crossdb once disagreed with the rules (fixed; kept as examples) -----------

SHELF = (str(SHELVES[0]), "Top", "2024-01-01", "yes")
ITEM = ("A1", str(SHELVES[0]), "", "1.5", "true", "2024-05-01T09:30:00Z", "", "", "", "")


def item(**values):
    """ITEM with some fields changed."""
    return tuple(values.get(f, v) for f, v in zip(FIELDS["items"], ITEM, strict=True))


@all_databases
@pytest.mark.parametrize(
    "added",
    [
        "0001-01-01T00:30:00+01:00",  # the year 0 in UTC: the items writer died, and the load
        "9999-12-31T23:30:00-01:00",  # the year 10000
        "2024-05-01T09:30:00+05:75",  # was stored as +06:15
    ],
)
def test_a_moment_that_is_not_one_in_utc_is_refused(added, case_dir):
    case = {"rows": {"shelves": [SHELF], "items": [item(added=added), item(code="A2")]}}
    check_one_verdict(case, case_dir())


@all_databases
@pytest.mark.parametrize(
    "shelf",
    [
        "0x" + SHELVES[0].hex[2:],  # was shelf 001c2a52-..., which nobody gave
        "+" + SHELVES[0].hex[1:],
        f"{{{{{SHELVES[0]}}}}}",  # was shelf 6f1c2a52-... itself
        "-".join(SHELVES[0].hex[i : i + 4] for i in range(0, 32, 4)),
    ],
)
def test_a_uuid_look_alike_names_no_shelf(shelf, case_dir):
    case = {
        "rows": {
            "shelves": [SHELF, (shelf, "Low", "2024-01-01", "no")],
            "items": [item(shelf=shelf), item(code="A2", spare=shelf), item(code="A3")],
        }
    }
    check_one_verdict(case, case_dir())
