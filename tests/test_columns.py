"""core.columns: whole-number rows as one array must mean exactly what the row path means.

``parse`` may take a block of lines only when the csv module splits it into the same
fields, which the property below checks against ``csv.reader`` on lines drawn from an
alphabet full of the characters that change a split (quotes, signs, spaces, CR, other
delimiters). The rest checks the pieces the loader joins: batches of the right size in
order, the COPY bytes, membership, and that a CSV file's blocks reach the loader as Blocks
(so the verdict property of tests/test_verdicts.py runs through them).
"""

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import columns
from core.pg import packed_rows
from core.sources import FileSource, SyntheticSource
from core.sources.reading import BLOCK

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
    block = columns.parse(lines, delimiter, 3, positions, 1)
    expected = csv_split(lines, delimiter, 3, positions)
    if block is None:
        return  # left to the csv module, which decides as it always has
    assert expected is not None, lines
    assert block.rows() == expected
    assert block.values.tolist() == [[int(v) for v in fields] for _n, fields in expected]


def test_plain_digits_are_taken_and_keep_their_text():
    block = columns.parse(["007,2,3", "4,5,6"], ",", 3, [0, 1, 2], 10)
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
    assert columns.parse(lines, ",", 3, [0, 1, 2], 1) is None


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
    id_set = type("Small", (columns.IdSet,), {"TABLE_SPAN": span})(known)
    got = id_set.contains(np.array(values, dtype=np.int64))
    assert got.tolist() == [v in known for v in values]
    near = [i + d for i in ids for d in (-1, 0, 1)]  # dense ids, and values at their edges
    got = id_set.contains(np.array(near, dtype=np.int64))
    assert got.tolist() == [v in known for v in near]


ORDER_TYPES = ["bigint", "bigint", "bigint", "integer"]


def test_the_copy_payload_is_the_row_packers():
    rows = [(1, 1, 1, 1), (2**63 - 1, 2**40, 7, 2**31 - 1), (12345, 678, 9, -(2**31))]
    assert columns.copy_payload(ORDER_TYPES, np.array(rows)) == packed_rows(ORDER_TYPES, rows)


def test_what_the_copy_payload_cannot_hold_is_left_to_write_row():
    assert columns.copy_payload(ORDER_TYPES, np.array([(1, 1, 1, 2**31)])) is None
    assert columns.copy_payload(["bigint", "numeric"], np.array([(1, 2)])) is None


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
