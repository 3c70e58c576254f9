"""Whole-number blocks read straight from CSV and JSONL lines, in C, never deciding
anything the csv or json module would decide differently:

* ``parse`` accepts only a block of lines that the csv module would split into exactly
  these numbers: nothing but ASCII digits, the delimiter and line ends, every line with
  the header's number of fields, none empty or longer than 18 digits (so every value fits
  in 64 bits). Anything else, a quote, a sign, a blank line, is left to the csv module.
* ``parse_jsonl`` accepts only lines that ``json.loads`` would read as one flat object of
  exactly the table's keys, each holding a plain whole number, all written alike (the keys
  in one order, the same spacing): the first line's text is the template, and one regular
  expression checks every line against it. A sign, a leading zero, a string, an extra key,
  other spacing or invalid JSON leaves the lines to the row path.
"""

import re
from functools import lru_cache

import numpy as np

from crossdb.loading.columns import Block, Layout

DIGITS = b"0123456789"
MAX_DIGITS = 18  # every number of up to 18 digits fits in a signed 64-bit integer
NEWLINE = ord("\n")
QUOTE, SPACE, ZERO, NINE = map(ord, '" 09')


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
