"""crossdb.loading.columns: whole-number rows as one array must mean exactly what the row path
means.

``parse`` may take a block of lines only when the csv module splits it into the same
fields, which the property below checks against ``csv.reader`` on lines drawn from an
alphabet full of the characters that change a split (quotes, signs, spaces, CR, other
delimiters). ``parse_jsonl`` likewise, against the JSONL row path (``json.loads`` per line)
on files of lines written in many ways, with a negative control. The rest checks the
pieces the loader joins: batches of the right size in order, the COPY bytes, membership,
that a CSV file's blocks reach the loader as Blocks (so the verdict property of
tests/test_verdicts.py runs through them), and that a JSONL load stores and rejects the same
rows with its Blocks as without.
"""

import csv
import json
from unittest import mock

import numpy as np
import pytest
from crossdb.loading import binarycopy, columns, idsets, load, parsers
from crossdb.loading.postgres import packed_rows
from crossdb.sources import FileSource, reading
from crossdb.sources.reading import BLOCK
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sources import SyntheticSource
from tests.conftest import all_databases

FIELD = st.one_of(
    st.text("0123456789", min_size=1, max_size=4),
    st.sampled_from(["", "007", "0", "1" * 18, "1" * 19, "+1", "-2", " 3", "4 ", '"5"', "6.0"]),
    st.text("0123456789,;\t\"' +-.\r\xa0é", max_size=4),
)


def csv_split(lines, delimiter, width, positions):
    """What the csv module makes of lines: (line number, wanted fields), or None when some
    line is not exactly one record of width fields."""
    out = []
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        for number, record in enumerate(reader, start=1):
            if reader.line_num != number or len(record) != width:
                return None
            out.append((number, tuple(record[p] for p in positions)))
    except csv.Error:
        return None
    return out


@settings(max_examples=400, deadline=None)
@given(
    delimiter=st.sampled_from([",", ";", "\t"]),
    rows=st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=6),
    crlf=st.booleans(),
    ragged=st.booleans(),
)
def test_a_block_is_taken_only_when_the_csv_module_splits_it_the_same(
    delimiter, rows, crlf, ragged
):
    if ragged:
        rows[0] = rows[0][:2]
    lines = [delimiter.join(r) + ("\r" if crlf else "") for r in rows]
    positions = [2, 0]
    block = parsers.parse(lines, delimiter, 3, positions, 1)
    expected = csv_split(lines, delimiter, 3, positions)
    if block is None:
        return  # left to the csv module, which decides as it always has
    assert expected is not None, lines
    assert block.rows() == expected
    assert block.values.tolist() == [[int(v) for v in fields] for _n, fields in expected]


def test_plain_digits_are_taken_and_keep_their_text():
    block = parsers.parse(["007,2,3", "4,5,6"], ",", 3, [0, 1, 2], 10)
    assert block.values.tolist() == [[7, 2, 3], [4, 5, 6]]
    assert block.rows() == [(10, ("007", "2", "3")), (11, ("4", "5", "6"))]


@pytest.mark.parametrize(
    "lines",
    [
        ["1,2,3", ""],  # a blank line: the csv module skips it
        ["1,2,3", "4,5"],  # a short line
        ["1,2,3,4"],  # a long one
        ["1,,3"],  # an empty field
        ["1,2,3\r4,5,6"],  # a lone CR
        ["1,2," + "9" * 19],  # more digits than 64 bits hold
        ["1,2,٣"],  # a digit outside ASCII
        ['1,2,"3"'],
    ],
)
def test_anything_else_is_left_to_the_csv_module(lines):
    assert parsers.parse(lines, ",", 3, [0, 1, 2], 1) is None


def blocks_of(sizes):
    start = 0
    for size in sizes:
        values = np.arange(start, start + size, dtype=np.int64).reshape(-1, 1)
        texts = [str(v) for v in range(start, start + size)]
        yield columns.Block(values, np.arange(start, start + size), texts)
        start += size


@given(sizes=st.lists(st.integers(1, 9), max_size=8), size=st.integers(1, 10))
def test_batches_hold_size_rows_in_order(sizes, size):
    out = list(columns.batches(blocks_of(sizes), size))
    assert all(len(b) == size for b in out[:-1])
    assert 0 < len(out[-1]) <= size if out else not sizes
    assert [v for b in out for v in b.values[:, 0].tolist()] == list(range(sum(sizes)))
    assert [v for b in out for v in b.lines.tolist()] == list(range(sum(sizes)))
    assert [t for b in out for t in b.texts] == [str(v) for v in range(sum(sizes))]


@given(
    st.lists(st.integers(-(2**40), 2**40), max_size=30),
    st.one_of(st.lists(st.integers(-(2**40), 2**40)), st.lists(st.integers(0, 200))),
    st.sampled_from([1 << 24, 64]),  # the lookup table where the span allows, else a search
)
def test_an_id_set_is_set_membership(values, ids, span):
    known = set(ids)
    id_set = type("Small", (idsets.IdSet,), {"TABLE_SPAN": span})(known)
    got = id_set.contains(np.array(values, dtype=np.int64))
    assert got.tolist() == [v in known for v in values]
    near = [i + d for i in ids for d in (-1, 0, 1)]  # dense ids, and values at their edges
    got = id_set.contains(np.array(near, dtype=np.int64))
    assert got.tolist() == [v in known for v in near]


ORDER_TYPES = ["bigint", "bigint", "bigint", "integer"]


def test_the_copy_payload_is_the_row_packers():
    rows = [(1, 1, 1, 1), (2**63 - 1, 2**40, 7, 2**31 - 1), (12345, 678, 9, -(2**31))]
    assert binarycopy.copy_payload(ORDER_TYPES, np.array(rows)) == packed_rows(ORDER_TYPES, rows)


def test_what_the_copy_payload_cannot_hold_is_left_to_write_row():
    assert binarycopy.copy_payload(ORDER_TYPES, np.array([(1, 1, 1, 2**31)])) is None
    assert binarycopy.copy_payload(["bigint", "numeric"], np.array([(1, 2)])) is None


def test_a_csv_files_plain_lines_reach_the_loader_as_blocks(tmp_path):
    lines = [f"{i},{i % 7 + 1},{i % 3 + 1},{i % 5 + 1}" for i in range(1, 20_001)]
    lines[12_000] = "12001,1,1,x"  # one bad row: its block goes to the csv module
    (tmp_path / "orders.csv").write_text("id,user_id,product_id,quantity\n" + "\n".join(lines))
    source = FileSource(tmp_path)
    runs = list(source.runs("orders"))
    assert any(isinstance(r, columns.Block) for r in runs[:1]), "the header's block too"
    blocks = [r for r in runs if isinstance(r, columns.Block)]
    assert sum(map(len, blocks)) > 12_000
    assert blocks[-1].lines[0] > 12_002, "after the bad row's block, blocks again"
    flattened = [
        row for run in runs for row in (run.rows() if isinstance(run, columns.Block) else run)
    ]
    assert flattened == list(source.rows("orders"))
    assert len(lines[0]) * 20_000 > 2 * BLOCK  # the file spans several blocks


def test_generated_orders_come_as_blocks_of_the_same_rows():
    source = SyntheticSource(40, 9, 120_011, seed=3)
    runs = list(source.runs("orders"))
    assert all(isinstance(r, columns.Block) for r in runs)
    assert [row for run in runs for row in run.rows()] == list(source.rows("orders"))


# --- JSONL ------------------------------------------------------------------------------

ORDER_KEYS = ("id", "user_id", "product_id", "quantity")
PLAIN_NUMBER = st.one_of(
    st.integers(0, 10**18 - 1).map(str), st.sampled_from(["0", "1", "999999999999999999"])
)
ODD_NUMBER = st.sampled_from(
    ["007", "-1", "-0", "+1", "1.0", "1e2", '"5"', "null", "true", "9" * 19, "[1]", "0x1"]
)
STYLES = [(", ", ": "), (",", ":"), (" , ", " : "), (",\t", ":\t")]


@st.composite
def jsonl_files(draw):
    """Lines of one JSONL orders file: most written alike with plain numbers (so runs of
    them take the Block path), the rest in every way the row path must decide."""
    order = draw(st.permutations(ORDER_KEYS))
    style = draw(st.sampled_from(STYLES))
    lines = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.integers(0, 9))
        keys, (comma, colon) = list(order), style
        numbers = [draw(PLAIN_NUMBER) for _ in keys]
        if kind == 1:
            numbers[draw(st.integers(0, 3))] = draw(ODD_NUMBER)
        elif kind == 2:
            keys = list(draw(st.permutations(ORDER_KEYS)))
        elif kind == 3:
            comma, colon = draw(st.sampled_from(STYLES))
        elif kind == 4:
            change = draw(st.sampled_from(["drop", "extra", "repeat", "digit key"]))
            if change == "drop":
                del keys[-1], numbers[-1]
            elif change == "extra":
                keys, numbers = keys + ["x"], numbers + ["1"]
            elif change == "repeat":
                keys, numbers = keys + [keys[0]], numbers + ["2"]
            else:
                keys[0] = keys[0] + "2"
        members = comma.join(f'"{k}"{colon}{n}' for k, n in zip(keys, numbers, strict=True))
        line = "{" + members + "}"
        if kind == 5:
            line = draw(st.sampled_from([" ", "", "\t", "{", "x", " " + line, line + " "]))
        elif kind == 6:
            line = line.replace(" ", "\xa0").replace(",", ",\u2003", 1)
        elif kind == 7:
            line = line.replace('"id"', '"\\u0069d"')
        end = draw(st.sampled_from(["\n"] * 6 + ["\r\n", "\r"]))
        lines.append(line + end)
    return lines


def runs_and_rows(tmp_path, lines, run_size):
    """(the rows the JSONL runs give, Block rows flattened; the row path's rows; Blocks)."""
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(lines), encoding="utf-8", newline="")
    with mock.patch.object(reading, "JSONL_RUN", run_size):
        runs = list(reading.jsonl_runs(path, ORDER_KEYS, whole_numbers=True))
    flattened = [r for run in runs for r in (run.rows() if isinstance(run, columns.Block) else run)]
    blocks = [run for run in runs if isinstance(run, columns.Block)]
    return flattened, list(reading.jsonl_rows(path, ORDER_KEYS)), blocks


def jsonl_property(tmp_path_factory, **overrides):
    @settings(settings(max_examples=300, deadline=None), **overrides)
    @given(lines=jsonl_files(), run_size=st.sampled_from([1, 2, 3, 5, 4096]))
    def run(lines, run_size):
        flattened, rows, _blocks = runs_and_rows(tmp_path_factory.mktemp("jsonl"), lines, run_size)
        assert flattened == rows, "".join(lines)

    return run


def test_jsonl_runs_give_the_rows_of_the_row_path(tmp_path_factory):
    jsonl_property(tmp_path_factory)()


def test_a_jsonl_block_path_that_keeps_the_files_key_order_fails_the_property(
    tmp_path_factory, monkeypatch
):
    """The negative control: Blocks whose columns stay in the file's key order."""
    original = parsers.parse_jsonl

    def file_order(lines, numbers, wanted):
        template = parsers.json_template(lines[0]) if lines else None
        return original(lines, numbers, template[0] if template else wanted)

    monkeypatch.setattr(parsers, "parse_jsonl", file_order)
    with pytest.raises(AssertionError):
        jsonl_property(tmp_path_factory, derandomize=True, max_examples=200)()


def test_plain_jsonl_lines_become_one_block_in_the_tables_field_order(tmp_path):
    lines = ['{"quantity": 4, "id": 1, "product_id": 3, "user_id": 2}\n'] * 3
    lines.append('{"quantity": 1, "id": 123456789012345678, "product_id": 0, "user_id": 2}\n')
    flattened, rows, blocks = runs_and_rows(tmp_path, lines, 4096)
    assert len(blocks) == 1 and flattened == rows
    assert blocks[0].values.tolist() == [[1, 2, 3, 4]] * 3 + [[123456789012345678, 2, 0, 1]]
    assert blocks[0].lines.tolist() == [1, 2, 3, 4]


def test_keys_holding_digits_are_not_read_as_numbers():
    block = parsers.parse_jsonl(
        ['{"k1": 11, "k22": 0}', '{"k1": 300, "k22": 7}'], [5, 6], ("k22", "k1")
    )
    assert block.rows() == [(5, (0, 11)), (6, (7, 300))]


@pytest.mark.parametrize(
    "line",
    [
        '{"id": 1, "user_id": 2, "product_id": 3, "quantity": 04}',  # invalid JSON
        '{"id": -1, "user_id": 2, "product_id": 3, "quantity": 4}',  # a sign: the rules say
        '{"id": 1, "user_id": 2, "product_id": 3}',  # a key missing
        '{"id": 1, "user_id": 2, "product_id": 3, "quantity": 4, "x": 1}',  # one more
        '{"id": 1, "id": 2, "user_id": 2, "product_id": 3, "quantity": 4}',  # json keeps 2
        '{"id": 1, "user_id": 2, "product_id": 3, "quantity": "4"}',
        '{"id": 1, "user_id": 2, "product_id": 3, "quantity": 4.0}',
        '{"id":\xa01, "user_id": 2, "product_id": 3, "quantity": 4}',  # not JSON's space
        '{"id": 1234567890123456789, "user_id": 2, "product_id": 3, "quantity": 4}',
        ' {"id": 1, "user_id": 2, "product_id": 3, "quantity": 4}',
    ],
)
def test_any_other_jsonl_line_is_left_to_the_row_path(line):
    plain = '{"id": 1, "user_id": 2, "product_id": 3, "quantity": 4}'
    assert parsers.parse_jsonl([plain], [1], ORDER_KEYS) is not None
    assert parsers.parse_jsonl([line], [1], ORDER_KEYS) is None
    assert parsers.parse_jsonl([plain, line], [1, 2], ORDER_KEYS) is None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows), encoding="utf-8")


@all_databases
def test_a_jsonl_load_stores_and_rejects_the_same_with_blocks_as_without(tmp_path):
    from tests.test_verdicts import dump, empty_tables

    _jsonl(
        tmp_path / "users.jsonl",
        [{"id": i, "name": f"U{i}", "email": f"u{i}@x.org"} for i in range(1, 40)],
    )
    _jsonl(
        tmp_path / "products.jsonl",
        [{"id": i, "name": f"P{i}", "price": "2.50"} for i in range(1, 9)],
    )
    orders = [
        {"id": i, "user_id": i % 45 + 1, "product_id": i % 10 + 1, "quantity": i % 4}
        for i in range(1, 3000)
    ]  # missing users and products, quantity 0
    orders[100]["quantity"] = 2**31  # beyond the column: its batch goes through the rules
    orders[200] = {"quantity": 1, "id": 5, "user_id": 1, "product_id": 1}  # id 5 again
    orders[300]["id"] = "301"  # a string: the row path
    _jsonl(tmp_path / "orders.jsonl", orders)
    outcomes, blocks = [], []
    parse = parsers.parse_jsonl

    def spy(*args):
        blocks.append(parse(*args))
        return blocks[-1]

    for fast in (True, False):
        empty_tables()
        with (
            mock.patch.object(parsers, "parse_jsonl", spy if fast else lambda *a: None),
            mock.patch.object(reading, "JSONL_RUN", 250),  # the odd lines' runs, and others
        ):
            result = load.load(FileSource(tmp_path), batch_size=700)
        reasons = [(r.table, r.line, r.id, r.reason) for r in result.sorted_rejections()]
        counts = {t: (v.stored, v.present, v.rejected) for t, v in result.tables.items()}
        outcomes.append((dump(), reasons, counts))
    assert any(b is not None for b in blocks), "the fast path was taken"
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1], "the case has rejections"


def test_jsonl_runs_of_long_lines_hold_few_of_them(tmp_path):
    """Runs are bounded in characters too, so a file of long lines is not held 4096 at a
    time (each 50,000-character line here goes to the row path, as its extra key says)."""
    note = "x" * 50_000
    lines = [
        json.dumps({"id": i, "user_id": 1, "product_id": 1, "quantity": 1, "note": note}) + "\n"
        for i in range(1, 41)
    ]
    (tmp_path / "orders.jsonl").write_text("".join(lines), encoding="utf-8")
    runs = list(reading.jsonl_runs(tmp_path / "orders.jsonl", ORDER_KEYS, whole_numbers=True))
    assert max(map(len, runs)) <= reading.JSONL_RUN_CHARS // 50_000 + 1
    assert [r for run in runs for r in run] == list(
        reading.jsonl_rows(tmp_path / "orders.jsonl", ORDER_KEYS)
    )


def test_a_long_first_line_is_no_template():
    """Valid JSON spaced out to 100,000 characters goes the row way, without compiling a
    regular expression of that size (about 2 s per line, found by a review)."""
    before = parsers._json_lines_re.cache_info().misses
    line = '{"id":' + " " * 100_000 + '1,"user_id":2,"product_id":3,"quantity":4}'
    assert parsers.parse_jsonl([line], [1], ORDER_KEYS) is None
    assert parsers._json_lines_re.cache_info().misses == before
    assert parsers.parse_jsonl([line.replace(" " * 100_000, "")], [1], ORDER_KEYS) is not None


USER_KEYS = ("id", "name", "email")
JSON_VALUE = st.one_of(
    st.integers(-(10**20), 10**20),
    st.text(max_size=4),
    st.sampled_from([None, True, 1.5, [1], {"a": 1}]),
)


@st.composite
def jsonl_user_files(draw):
    """Lines of one JSONL users file: objects of any values, and lines json.loads refuses or
    reads as something else, or that hold something after the object."""
    lines = []
    for _ in range(draw(st.integers(1, 10))):
        record = {k: draw(JSON_VALUE) for k in USER_KEYS}
        if draw(st.booleans()):
            del record[draw(st.sampled_from(USER_KEYS))]
        if draw(st.booleans()):
            record["extra"] = draw(JSON_VALUE)
        line = json.dumps(record, ensure_ascii=draw(st.booleans()))
        line = draw(
            st.sampled_from(
                [line] * 8
                + [" " + line, line + " ", line + "{}", line[:-1], "[1]", "null", "NaN"]
                + ["{" * 3000 + "}" * 3000, '{"id": 1' + "0" * 5000 + "}", "\ufeff" + line]
                + [line.replace(":", ": \x0c", 1), '{"id": 1, "id": 2, "name": 3, "email": 4}']
            )
        )
        lines.append(line + draw(st.sampled_from(["\n", "\r\n", "\r"])))
    return lines


def user_runs_property(tmp_path_factory, **overrides):
    @settings(settings(max_examples=200, deadline=None), **overrides)
    @given(lines=jsonl_user_files(), run_size=st.sampled_from([1, 3, 4096]))
    def run(lines, run_size):
        path = tmp_path_factory.mktemp("users") / "users.jsonl"
        path.write_text("".join(lines), encoding="utf-8", newline="")
        with mock.patch.object(reading, "JSONL_RUN", run_size):
            runs = [r for run in reading.jsonl_runs(path, USER_KEYS) for r in run]
        assert runs == list(reading.jsonl_rows(path, USER_KEYS)), "".join(lines)

    return run


def test_jsonl_runs_of_any_table_give_the_rows_of_the_row_path(tmp_path_factory):
    user_runs_property(tmp_path_factory)()


def test_a_scan_that_ignores_what_follows_the_object_fails_the_property(
    tmp_path_factory, monkeypatch
):
    """The negative control: a run that takes lines with something after their object."""

    def first_object(texts, wanted):  # _scanned without its check of where objects end
        try:
            records = [reading.SCAN_JSON(t, 0)[0] for t in texts]
            return [tuple(r[k] for k in wanted) for r in records]
        except (StopIteration, ValueError, KeyError, TypeError, RecursionError):
            return None

    monkeypatch.setattr(reading, "_scanned", first_object)
    with pytest.raises(AssertionError):
        user_runs_property(tmp_path_factory, derandomize=True, max_examples=200)()


def _at_depth(frames, call):
    return call() if frames == 0 else _at_depth(frames - 1, call)


@pytest.mark.parametrize("frames", [0, 300])  # the caller's own stack: it must not matter
def test_nesting_is_limited_the_same_on_every_path(tmp_path, frames):
    """json stops at Python's recursion limit, which counts the caller's frames too (a
    review found a depth one path took and the other refused); the limit is now fixed."""
    deep = '{"id": ' + "[" * 199 + "]" * 199 + ', "name": "[[[", "email": 1}'  # 200 deep
    too_deep = deep.replace("[" * 199, "[" * 200).replace("]" * 199, "]" * 200)
    path = tmp_path / "users.jsonl"
    path.write_text(f"{deep}\n{too_deep}\n[]\n{too_deep}\n", encoding="utf-8")
    for size in (1, 4096):
        with mock.patch.object(reading, "JSONL_RUN", size):
            runs = _at_depth(frames, lambda: list(reading.jsonl_runs(path, USER_KEYS)))
        rows = [r for run in runs for r in run]
        assert rows == _at_depth(frames, lambda: list(reading.jsonl_rows(path, USER_KEYS)))
        assert isinstance(rows[0][1], tuple)
        assert rows[1][1].reason == "not valid JSON (nested too deeply)"
        assert rows[3][1].reason == "not valid JSON (nested too deeply)"


@pytest.mark.parametrize("length", [reading.MAX_RECORD, 2 * reading.MAX_RECORD])
def test_a_crlf_cut_by_the_read_limit_is_one_line_end(tmp_path, length):
    """A line of exactly MAX_RECORD characters, or an overlong one whose CR ends a chunk of
    the read past it, then CRLF: the LF that readline hands back alone is no line, so the
    next line keeps its number (found by a review: every later line was numbered one on)."""
    head = '{"id": 1, "user_id": 2, "product_id": 3, "quantity": 4'
    first = head + " " * (length - len(head) - 1) + "}"
    assert len(first) == length
    path = tmp_path / "orders.jsonl"
    path.write_text(first + "\r\n" + head + "}\r\n", encoding="utf-8", newline="")
    for read in (
        reading.jsonl_rows,
        lambda p, w: [r for run in reading.jsonl_runs(p, w) for r in run],
    ):
        assert [line for line, _values in read(path, ORDER_KEYS)] == [1, 2]


def readline_reference(path, limit):
    """What the JSONL readers must number: the file object's lines (newline="": LF, CRLF
    and CR end a line), numbered from 1, blank ones left out, those longer than limit None."""
    out = []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, 1):
            text = line.rstrip("\r\n")
            if len(text) > limit:
                out.append((number, None))
            elif text.strip():
                out.append((number, text))
    return out


def line_runs_property(tmp_path_factory, **overrides):
    """Lines cut into reads of 1 to 9 characters, with a line limit of 3 to 12, so every
    way a read can end (inside a CRLF, inside a long line, on a blank line) is met."""

    @settings(settings(max_examples=300, deadline=None), **overrides)
    @given(
        text=st.text(alphabet="ab {é\n\r\t", max_size=80),
        size=st.integers(1, 9),
        limit=st.integers(3, 12),
    )
    def run(text, size, limit):
        path = tmp_path_factory.mktemp("lines") / "t.jsonl"
        path.write_text(text, encoding="utf-8", newline="")
        with (
            mock.patch.object(reading, "MAX_RECORD", limit),
            mock.patch.object(reading, "BLOCK", size),
            reading.Opened(path) as opened,
        ):
            got = [
                pair
                for numbers, texts in reading._jsonl_line_runs(opened, size)
                for pair in zip(numbers, texts, strict=True)
            ]
        assert got == readline_reference(path, limit), repr(text)

    return run


def test_jsonl_lines_read_in_blocks_are_the_file_objects_lines(tmp_path_factory):
    line_runs_property(tmp_path_factory)()


def test_a_block_reader_that_ends_lines_at_lf_only_fails_the_property(
    tmp_path_factory, monkeypatch
):
    """The negative control: a CR alone no longer ends a line."""

    def lf_only(text):
        lines = text.split("\n")
        last = lines.pop()  # empty, or what follows the last LF (up to a CR)
        return [line.removesuffix("\r") for line in lines] + ([last] if last else [])

    monkeypatch.setattr(reading, "_lines_of", lf_only)
    with pytest.raises(AssertionError):
        line_runs_property(tmp_path_factory, derandomize=True, max_examples=300)()
