"""Integer rows held as one array: the loader's fast path for tables of whole numbers.

A table whose every input field is a whole number (orders: id, user_id, product_id,
quantity) makes up most of a large load, and handled as Python tuples it costs about
5 seconds of Python per million rows between the file and the database: one ``int`` per
value, transposing for the column checks, pickling to the writer, packing for COPY. Held
as one ``numpy`` array the same steps are a handful of C passes over a block.

The fast path never decides anything the row path would decide differently:

* ``parse`` accepts only a block of lines that the csv module would split into exactly
  these numbers: nothing but ASCII digits, the delimiter and line ends, every line with
  the header's number of fields, none empty or longer than 18 digits (so every value fits
  in 64 bits). Anything else, a quote, a sign, a blank line, is left to the csv module.
* ``parse_jsonl`` accepts only lines that ``json.loads`` would read as one flat object of
  exactly the table's keys, each holding a plain whole number, all written alike (the keys
  in one order, the same spacing): the first line's text is the template, and one regular
  expression checks every line against it. A sign, a leading zero, a string, an extra key,
  other spacing or invalid JSON leaves the lines to the row path.
* ``Block.rows`` gives back, for the rare batch the validator cannot settle here (a value
  out of range), the very rows the row path would have given: for CSV the original text of
  each field, so rejections show what the file says (``007``, not ``7``); for JSONL the
  integers ``json.loads`` makes.

Line numbers travel as an array beside the values (``None`` for generated rows).
"""

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DIGITS = b"0123456789"
MAX_DIGITS = 18  # every number of up to 18 digits fits in a signed 64-bit integer
NEWLINE = ord("\n")
QUOTE, SPACE, ZERO, NINE = map(ord, '" 09')

# PostgreSQL's binary COPY stream: signature, flags, header extension length; then per row
# the field count and each field as its length and its big-endian bytes; then -1.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
COPY_WIDTHS = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2"}
COPY_RANGES = {name: (np.iinfo(code).min, np.iinfo(code).max) for name, code in COPY_WIDTHS.items()}


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


def parse(lines, delimiter, width, positions, first_line):
    """A Block of the wanted fields of lines (numbered from first_line), or None when the
    csv module could split them otherwise (see the module docstring)."""
    if not lines:
        return None
    try:
        data = ("\n".join(lines) + "\n").encode("ascii")
    except UnicodeEncodeError:
        return None
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:  # a lone CR: the csv module reads it as a line break in a field
            return None
    separator = delimiter.encode("ascii")
    if data.translate(None, DIGITS + separator + b"\n"):
        return None
    count = len(lines)
    values = _numbers(data, separator, width, count)
    if values is None:
        return None
    if list(positions) != list(range(width)):
        values = np.ascontiguousarray(values[:, positions])
    numbered = np.arange(first_line, first_line + count, dtype=np.int64)
    return Block(values, numbered, lines, Layout(delimiter, width, tuple(positions)))


def _numbers(data, separator, width, count):
    """data (count lines of width plain numbers, separator between them, each line ended
    by a newline, nothing else) as a (count, width) int64 array, or None when a line has
    another number of fields, an empty field or a number of more than MAX_DIGITS."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero((buffer < 48) | (buffer > 57))  # every separator and line end
    if len(ends) != count * width or data.count(b"\n") != count:
        return None
    if not (buffer[ends[width - 1 :: width]] == NEWLINE).all():
        return None  # some line has more or fewer fields than the header
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    if lengths.min() < 1 or lengths.max() > MAX_DIGITS:
        return None  # an empty field (the scalar rule names it) or a number too long
    numbers = np.fromstring(
        data.replace(b"\n", separator), dtype=np.int64, sep=separator.decode("ascii")
    )
    if len(numbers) != count * width:  # cannot happen after the checks above
        return None
    return numbers.reshape(count, width)


# One member of a flat JSON object whose value is a plain whole number: JSON's own spacing
# (space and tab; a line holds no CR or LF), a key of letters, digits and underscores, and
# a number json.loads reads as an int of at most MAX_DIGITS digits (no sign, no leading 0).
JSON_SPACE = "[ \t]*"
JSON_WHOLE = f"(?:0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}})"
JSON_MEMBER_RE = re.compile(
    f'({JSON_SPACE})"([A-Za-z_][A-Za-z0-9_]*)"({JSON_SPACE}):({JSON_SPACE}){JSON_WHOLE}({JSON_SPACE})'
)


JSON_TEMPLATE_CHARS = 512  # longer first lines go the row way (a template is one regex)


def json_template(line):
    """(keys in the line's order, the literal text around its numbers) when line is one
    flat JSON object of plain whole numbers under distinct simple keys; else None."""
    if not line.startswith("{") or len(line) > JSON_TEMPLATE_CHARS:
        return None  # a regex holding a million spaces takes seconds to compile
    keys, pieces, literal, position = [], [], "{", 1
    while True:
        member = JSON_MEMBER_RE.match(line, position)
        if member is None:
            return None
        before, key, after_key, after_colon, after_value = member.groups()
        keys.append(key)
        pieces.append(f'{literal}{before}"{key}"{after_key}:{after_colon}')
        literal, position = after_value, member.end()
        if line.startswith(",", position):
            literal, position = literal + ",", position + 1
        elif position == len(line) - 1 and line.endswith("}"):
            pieces.append(literal + "}")
            break
        else:
            return None
    if len(set(keys)) != len(keys):
        return None  # json.loads keeps the last of a repeated key: the row path decides
    return tuple(keys), tuple(pieces)


@lru_cache(maxsize=16)
def _json_lines_re(pieces):
    """Lines each written exactly as the template: its pieces with a number between each."""
    line = JSON_WHOLE.join(map(re.escape, pieces))
    return re.compile(f"(?:{line}\n)*")


def parse_jsonl(lines, numbers, wanted):
    """A Block of the wanted fields of JSONL lines (without their line ends, numbered by
    numbers), or None when the row path might read them otherwise (module docstring)."""
    if not lines:
        return None
    template = json_template(lines[0])
    if template is None:
        return None
    keys, pieces = template
    if sorted(keys) != sorted(wanted):
        return None  # a missing or an extra key: the row path says which, or ignores it
    text = "\n".join(lines) + "\n"
    if not text.isascii() or _json_lines_re(pieces).fullmatch(text) is None:
        return None
    # Every line is the template with numbers in it, so the numbers are the digits outside
    # the quotes (which only enclose the keys): blank out everything else and read them.
    buffer = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    digits = (buffer >= ZERO) & (buffer <= NINE)
    if any(c.isdigit() for key in keys for c in key):  # uint8 wraps, keeping the parity
        digits &= (np.cumsum(buffer == QUOTE, dtype=np.uint8) & 1) == 0
    spaced = np.where(digits, buffer, SPACE).astype(np.uint8).tobytes()
    values = np.fromstring(spaced, dtype=np.int64, sep=" ")  # any run of spaces separates
    if len(values) != len(lines) * len(keys):  # cannot happen after the match above
        return None
    values = values.reshape(len(lines), len(keys))
    positions = [keys.index(name) for name in wanted]
    if positions != list(range(len(keys))):
        values = np.ascontiguousarray(values[:, positions])
    return Block(values, np.array(numbers, dtype=np.int64))


def within(column, low, high):
    """Whether every value of column lies in [low, high]."""
    return not len(column) or (column.min() >= low and column.max() <= high)


class IdSet:
    """Ids to test whole arrays against: a lookup table when they are dense enough (one
    byte per id in their span, up to ``TABLE_SPAN``), else a sorted array (a binary
    search per value, about 30 times slower at 100,000 ids)."""

    TABLE_SPAN = 1 << 24

    def __init__(self, ids):
        self.ids = np.sort(np.fromiter(ids, np.int64, len(ids)))
        self.table = None
        if len(self.ids) and self.ids[-1] - self.ids[0] < self.TABLE_SPAN:
            self.low = self.ids[0]
            self.table = np.zeros(self.ids[-1] - self.low + 1, dtype=bool)
            self.table[self.ids - self.low] = True

    def __len__(self):
        return len(self.ids)

    def contains(self, values):
        """Whether each of values is one of the ids."""
        if not len(self.ids):
            return np.zeros(len(values), dtype=bool)
        if self.table is not None:
            offsets = values - self.low
            inside = (offsets >= 0) & (offsets < len(self.table))
            found = np.zeros(len(values), dtype=bool)
            found[inside] = self.table[offsets[inside]]
            return found
        at = np.minimum(np.searchsorted(self.ids, values), len(self.ids) - 1)
        return self.ids[at] == values


def copy_payload(types, values):
    """The rows of values as binary COPY data, or None when a type is not a fixed-width
    integer or a value is beyond its column's range (PostgreSQL then says so itself)."""
    if any(t not in COPY_WIDTHS for t in types):
        return None
    for name, column in zip(types, values.T, strict=True):
        low, high = COPY_RANGES[name]
        if not within(column, low, high):
            return None
    layout = [("count", ">i2")]
    for i, name in enumerate(types):
        layout += [(f"size{i}", ">i4"), (f"value{i}", COPY_WIDTHS[name])]
    packed = np.empty(len(values), dtype=np.dtype(layout))
    packed["count"] = len(types)
    for i, name in enumerate(types):
        packed[f"size{i}"] = np.dtype(COPY_WIDTHS[name]).itemsize
        packed[f"value{i}"] = values[:, i]
    return packed.tobytes()


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
