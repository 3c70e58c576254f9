"""Integer rows held as one array: the loader's fast path for tables of whole numbers.

A table whose every input field is a whole number (orders: id, user_id, product_id,
quantity) makes up most of a large load, and handled as Python tuples it costs about
5 seconds of Python per million rows between the file and the database: one ``int`` per
value, transposing for the column checks, pickling to the writer, packing for COPY. Held
as one ``numpy`` array (a ``Block``) the same steps are a handful of C passes over a block:
read by ``crossdb.loading.parsers``, checked against ``crossdb.loading.idsets``, packed by
``crossdb.loading.binarycopy``.

The fast path never decides anything the row path would decide differently: ``Block.rows``
gives back, for the rare batch the validator cannot settle here (a value out of range), the
very rows the row path would have given: for CSV the original text of each field, so
rejections show what the file says (``007``, not ``7``); for JSONL the integers
``json.loads`` makes.

Line numbers travel as an array beside the values (``None`` for generated rows).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """How a file's line splits into fields: the delimiter, the line's width, and where the
    table's fields are on it."""

    delimiter: str
    width: int
    positions: tuple

    def fields(self, text):
        values = text.rstrip("\r").split(self.delimiter)
        if self.positions == tuple(range(self.width)):
            return tuple(values)
        return tuple(values[p] for p in self.positions)


@dataclass(frozen=True, eq=False)
class Block:
    """Rows of whole numbers: ``values[i]`` in the table's field order, from line
    ``lines[i]`` of a file, written there as ``texts[i]`` (both None for generated rows)."""

    values: np.ndarray  # shape (rows, fields), int64
    lines: np.ndarray | None = None
    texts: list | None = None
    layout: Layout | None = None

    def __len__(self):
        return len(self.values)

    def rows(self):
        """The block as the row path gives it: (line, values) with the file's own text."""
        if self.texts is not None:
            assert self.layout is not None and self.lines is not None  # read from a file
            fields = list(map(self.layout.fields, self.texts))
            return list(zip(self.lines.tolist(), fields, strict=True))
        tuples = list(map(tuple, self.values.tolist()))
        lines = [None] * len(tuples) if self.lines is None else self.lines.tolist()
        return list(zip(lines, tuples, strict=True))

    def split(self, count):
        """(the first count rows, the rest)."""
        return self._part(slice(None, count)), self._part(slice(count, None))

    def _part(self, part):
        lines = None if self.lines is None else self.lines[part]
        texts = None if self.texts is None else self.texts[part]
        return Block(self.values[part], lines, texts, self.layout)


def join(blocks):
    """One Block of several, in order (all from one file, or all generated)."""
    if len(blocks) == 1:
        return blocks[0]
    first = blocks[0]
    values = np.concatenate([b.values for b in blocks])
    if first.lines is None:
        return Block(values)
    lines = np.concatenate([b.lines for b in blocks])
    if first.texts is None:  # read from JSONL: the values are what the row path gives
        return Block(values, lines)
    return Block(values, lines, [t for b in blocks for t in b.texts], first.layout)


def batches(blocks, size):
    """Blocks of exactly size rows, joined or split from blocks, and the rest at the end."""
    pending, count = [], 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        while count >= size:
            head, rest = join(pending).split(size)
            yield head
            pending, count = ([rest] if len(rest) else []), len(rest)
    if pending:
        yield join(pending)


def tuples(rows):
    """rows as a list of tuples, whether a Block's values or a list already."""
    if isinstance(rows, np.ndarray):
        return list(map(tuple, rows.tolist()))
    return rows


def line_list(lines, count):
    """A Block's line numbers as a list (None for each generated row), or lines as given."""
    if lines is None:
        return [None] * count
    if isinstance(lines, np.ndarray):
        return lines.tolist()
    return lines
