"""From a file's bytes to records, in bounded memory: CSV records and JSONL lines.

Every reader yields ``(line, values)`` in the shape of ``crossdb.loading.rows``: ``values`` is a
tuple of raw values in ``crossdb.registry.fields`` order, or a ``Malformed`` for a record that
cannot be split into fields. Three rules hold for any input, however hostile:

* Nothing is held whole. Text is read ``BLOCK`` characters at a time and cut into complete
  lines; a line longer than ``MAX_RECORD`` is skipped chunk by chunk and stands in the
  stream as a blank line whose number is remembered, so the 200 MB line costs no more
  memory than a short one. One CSV field is capped at ``MAX_RECORD`` by the csv module.
* A CSV record over several lines keeps its fields and its line range (``Lines``): the
  text rules reject a line break in any field, and the validator adds "(an unbalanced
  quote?)" since in files people write that is almost always a quote left open swallowing
  the rows after it. A record over several lines with the wrong number of fields is
  ``Malformed``, with the same hint.
* A ``.gz`` file is decompressed as it is read; progress is counted in compressed bytes.

``csv.reader`` is fed by ``itertools.chain`` over blocks of lines, so the per-line work
stays in C: measured at 1M orders, this is as fast as iterating the file object directly,
which could not cap a line's length. Records go out in runs (``csv_rows``), with no Python
step per row when every record of a run is one line of the right width.

JSONL is read in blocks too, cut into the lines the file object's ``readline`` would give
(``_jsonl_line_runs``: a block of LF lines is split and numbered in C; an overlong line is
read past, never held), and each line is one ``json.loads`` (``jsonl_rows``). The loader
reads runs of lines instead
(``jsonl_runs``), with the very rows the line-by-line path gives: a run goes through
json's C scanner in one ``map`` when every line is one object alone with every wanted key
(100,000 users in 0.35 s instead of 0.69 s), and for a table of whole numbers it is first
offered to ``parsers.parse_jsonl``, which takes it when every line is written like its
first with plain numbers and reads it in a few numpy passes (1M orders in about 1.6 s
instead of about 9 s). Any other run goes line by line.
"""

import codecs
import csv
import difflib
import gzip
import io
import json
import os
import shlex
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import Any

from crossdb.loading import parsers
from crossdb.loading.rows import Lines, Malformed, NumberText
from crossdb.rules import printable

ENCODING = "utf-8-sig"  # tolerate a byte-order mark from spreadsheet exports
MAX_RECORD = 1 << 20  # characters in one line, one CSV field or one JSONL record
BLOCK = 1 << 16  # characters read at a time: the peak memory of reading is a few blocks
DELIMITERS = (",", ";", "\t")  # tried on the header line; the one naming most fields wins
# a damaged .gz fails mid-stream; a codec other than UTF-8 may fail where surrogateescape
# cannot keep the bytes (an odd byte at the end of a UTF-16 file)
READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeError)
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"  # also .xlsx and .ods files, which are ZIP archives
csv.field_size_limit(MAX_RECORD)


class SourceError(Exception):
    """A problem with the input as a whole; the run stops before writing anything."""


def check_encoding(name):
    """Raise SourceError, naming --encoding, unless Python can read text with name (None:
    UTF-8). A codec of bytes to bytes (hex, zlib) is known but reads no text."""
    if name is None:
        return
    try:
        codecs.lookup(name)
    except LookupError:
        why = "Python knows no such encoding"
    else:
        try:
            io.TextIOWrapper(io.BytesIO(), encoding=name)
            return
        except LookupError:
            why = "not a text encoding"
    raise SourceError(
        f"--encoding {printable(name)}: {why}; give one such as utf-8, latin-1, cp1252 or utf-16"
    )


def text_encoding(name):
    """The codec to read a file with: name (any Python knows), or UTF-8 when it is None;
    UTF-8 always as ``utf-8-sig``, which drops a spreadsheet's byte-order mark."""
    if name is None or codecs.lookup(name).name == "utf-8":
        return ENCODING
    return name


def too_long(what="line"):
    return f"the {what} is longer than {MAX_RECORD:,} characters"


class Opened:
    """A file open for reading as text, and how far into its bytes (compressed, for .gz).

    A file that is still being written is not read as if it were whole: its size and
    modification time when it was opened are compared when its end is reached, before its
    last line is handed on (``check_unchanged``), and a file that changed stops the run
    (``SourceError``; what was committed stays, and the re-run finishes the load). A last
    line without a line end is otherwise a line like any other, as for Python's csv
    module, spreadsheets and PostgreSQL's COPY: editors and scripts often write one, and
    refusing it would refuse their files. A writer that stops in the middle of a line for
    longer than the whole load cannot be told from a finished file by any reader; a
    producer that writes to another name and renames the file when done avoids it.
    """

    def __init__(self, path, encoding=None):
        self.path = path
        self.encoding = encoding  # None: UTF-8, a byte-order mark allowed (ENCODING)
        try:
            self.raw = open(path, "rb")  # noqa: SIM115 - closed by close(), after streaming
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from exc
        self.at_open = os.fstat(self.raw.fileno())
        if problem := self._not_text():
            self.raw.close()
            raise SourceError(f"{path}: {problem}")
        binary: io.BufferedReader | gzip.GzipFile = self.raw
        if path.name.endswith(".gz"):
            binary = gzip.GzipFile(fileobj=self.raw, mode="rb")
        # surrogateescape keeps undecodable bytes, so the validator rejects only that row
        self.text = io.TextIOWrapper(
            binary, encoding=text_encoding(encoding), errors="surrogateescape", newline=""
        )
        self.overlong = set()  # numbers of the lines replaced by a blank line
        self.counter = None  # the csv reader, whose line_num numbers the lines handed out
        self.blocks = None  # the blocks of lines not yet handed to it (open_csv)
        self.skipped = 0  # lines read past it, as whole-number blocks (csv_runs)
        self.final = None  # the position when it was closed

    def _not_text(self):
        """Why the file's first bytes say it is not the text its name promises, or None:
        read as text, compressed data gives rows of binary garbage, each rejected."""
        head = self.raw.peek(len(ZIP_MAGIC))[: len(ZIP_MAGIC)]
        if head.startswith(GZIP_MAGIC) and not self.path.name.endswith(".gz"):
            return f"looks gzip-compressed; name it {self.path.name}.gz"
        if head.startswith(ZIP_MAGIC):
            stem = self.path.name.split(".", 1)[0]
            return f"looks like a ZIP archive (an Excel workbook? name it {stem}.xlsx), not text"
        if self.encoding is None and head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "starts with a UTF-16 byte-order mark; give --encoding utf-16"
        return None

    def position(self):
        if self.final is not None:
            return self.final
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0

    def lines_read(self):
        """The number of the last line handed out, by the csv reader or past it."""
        assert self.counter is not None  # set once the header is read
        return self.counter.line_num + self.skipped

    def close(self):
        self.final = self.position()
        self.text.close()
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, size):
        try:
            return self.text.read(size)
        except READ_ERRORS as exc:
            raise self.read_error(exc) from exc

    def read_error(self, exc):
        if isinstance(exc, UnicodeError):
            encoding = self.encoding or "UTF-8"
            return SourceError(f"{self.path}: cannot read it as {encoding} ({exc})")
        return SourceError(f"{self.path}: cannot read ({exc})")

    def check_unchanged(self):
        """Raise SourceError if the file's size or modification time is not what it was
        when it was opened: something is writing it while it is read."""
        if problem := changed(self.path, self.at_open, os.fstat(self.raw.fileno())):
            raise SourceError(problem)

    def readline(self, size):
        try:
            return self.text.readline(size)
        except READ_ERRORS as exc:
            raise self.read_error(exc) from exc

    def line_blocks(self):
        """Yield iterables of complete lines, about BLOCK characters at a time.

        Lines are split on ``\\n``, ``\\r\\n`` and ``\\r`` only, as the file object splits
        them, so line numbers agree (see ``_split``). ``in_quotes`` follows whether the text
        so far ends inside a quoted field (an odd count of ``"``; doubled quotes inside a
        field count twice), so that a field running on into a block without quotes keeps
        its line breaks.
        """
        carry = ""
        in_quotes = False
        while block := self.read(BLOCK):
            if carry:
                block = carry + block
            # a CR that ends the block may be half of a CRLF: it waits for the next block
            cut = (block.rfind("\n") + 1) or (block.rfind("\r", 0, len(block) - 1) + 1)
            if cut:
                carry = block[cut:]
                text = block[:cut]
                quoted = '"' in text
                yield _split(text, quoted or in_quotes)
                if quoted and text.count('"') % 2:
                    in_quotes = not in_quotes
            elif len(block) > MAX_RECORD:
                carry = self._skip_rest_of_line(ends_here=block.endswith("\r"))
                yield ("\n",)  # stands for the long line, numbered in self.overlong
            else:
                carry = block
        self.check_unchanged()  # before the last line, which may be cut short if it changed
        if carry:
            yield (carry,)

    def _skip_rest_of_line(self, ends_here=False):
        """Read past the end of an overlong line; return what follows it in the last block.
        ends_here: the block read so far ended with the line's CR."""
        if self.counter is None:
            raise SourceError(f"{self.path}: {too_long('header line')}")
        self.overlong.add(self.lines_read() + 1)
        return _past_line_end(self, ends_here)


# Line breaks to str.splitlines but not to the csv module or the file object.
OTHER_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _split(text, quotes):
    """Return text's lines as the csv module must see them, as cheaply as possible.

    Measured per row: with no quoted field in play, ``str.split("\\n")`` (the csv module
    ends a line at the end of each string, so the dropped ``\\n`` changes nothing outside
    quotes); else ``str.splitlines``, which keeps the breaks a quoted field holds, unless
    the block has a break only splitlines knows (a form feed belongs inside a field); else
    ``io.StringIO``, the slowest. One difference is left, on purpose: a stray CR inside a
    line of an LF or CRLF block is the csv module's "new-line character seen in unquoted
    field" for that line, where the file object would have made two lines of it.
    """
    if not quotes and ("\r\n" in text or "\r" not in text):
        lines = text.split("\n")
        lines.pop()  # the empty string after the last \n
        return lines
    if any(c in text for c in OTHER_BREAKS):
        return io.StringIO(text, newline="")
    return text.splitlines(True)


class Wanted(tuple):
    """The names a table's rows are read from, in row order, and those of them a file may
    leave out (``optional``: ``crossdb.rules.may_be_left_out``): a missing column or key
    of those reads as None, which their rule turns into the field's empty value.

    The names are the table's fields unless a column mapping (``crossdb.sources.mapping``)
    renames some; then ``fields`` says which field each name feeds and ``origins`` where
    the mapping said so, for messages. ``table`` lets a missing column's message suggest
    the ``--map`` that would fix it (None, for a rejects file, which no mapping reads).
    """

    optional: frozenset[str] = frozenset()
    table: str | None = None
    fields: tuple[str, ...] = ()
    origins: dict[str, str] = {}  # noqa: RUF012 - replaced per instance, never mutated

    def __new__(
        cls,
        names: Iterable[str],
        optional: Iterable[str] = (),
        table: str | None = None,
        fields: Iterable[str] | None = None,
        origins: dict[str, str] | None = None,
    ) -> "Wanted":
        wanted = super().__new__(cls, names)
        wanted.optional = frozenset(optional)
        wanted.table = table
        wanted.fields = tuple(wanted) if fields is None else tuple(fields)
        wanted.origins = dict(origins or {})
        return wanted

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            Wanted,
            (tuple(self), tuple(self.optional), self.table, self.fields, self.origins),
        )

    def field_of(self, name: str) -> str:
        """The field the column or key name feeds."""
        return self.fields[self.index(name)]


def optional_of(wanted):
    return getattr(wanted, "optional", frozenset())


def missing_message(
    path: os.PathLike[str] | str,
    wanted: Sequence[str],
    missing: Sequence[str],
    found: Sequence[str],
    shown: str,
    what: str = "",
    kind: str = "column",
) -> str:
    """The one line for a file lacking the columns (or a JSONL line's keys) named missing:
    which, and what the mapping said of each; the names wanted and found; and, for a
    table's file, the ``--map`` that would read each from the unused name closest to it
    (``difflib``), since a renamed column (``mail`` for ``email``) is the usual cause."""
    table = getattr(wanted, "table", None)
    origins: dict[str, str] = getattr(wanted, "origins", {})
    listed = []
    for name in missing:
        said = origins.get(name)
        if said is None or table is None:
            listed.append(printable(name))
        else:
            field = wanted.field_of(name) if isinstance(wanted, Wanted) else name
            listed.append(f"{printable(name)} (for {table}.{field}, by {said})")
    message = (
        f"{path}: missing {kind}(s) {', '.join(listed)}{what} "
        f"(the {'header' if kind == 'column' else 'line'} must name {printable(','.join(wanted))}; "
        f"found {shown})"
    )
    if table is None:
        return message
    used = {normalized(n) for n in wanted}
    unused = {normalized(n): n for n in found if normalized(n) not in used}
    hints = []
    for name in missing:
        close = difflib.get_close_matches(normalized(name), list(unused), n=1)
        if close:
            field = wanted.field_of(name) if isinstance(wanted, Wanted) else name
            column = printable(unused.pop(close[0]))
            hints.append(f"--map {shlex.quote(f'{table}.{field}={column}')}")
    return f"{message}; did you mean {' '.join(hints)}?" if hints else message


def normalized(name):
    """Compare header names as people write them: any case, spaces or a BOM around them."""
    return name.strip().lstrip("\ufeff").strip().casefold()


class CsvHeader:
    """Where each of a table's fields is in a file, and how the file is delimited."""

    def __init__(self, path, names, delimiter, line):
        self.path = path
        self.names = names  # as written, stripped
        self.delimiter = delimiter
        self.line = line  # the header's line number
        self.keys = [normalized(n) for n in names]

    def positions(self, wanted, what=""):
        """Return the index of each wanted field (None for an optional one the file lacks);
        raise SourceError if one is missing or twice. Wanted names are compared as header
        names are (``normalized``), so a mapped column may be written in any case too."""
        optional = optional_of(wanted)
        keys = [normalized(f) for f in wanted]
        missing = [
            f for f, k in zip(wanted, keys, strict=True) if k not in self.keys and f not in optional
        ]
        if missing:
            raise SourceError(
                missing_message(self.path, wanted, missing, self.names, self.shown(), what)
            )
        twice = [f for f, k in zip(wanted, keys, strict=True) if self.keys.count(k) > 1]
        if twice:
            raise SourceError(
                f"{self.path}: column(s) {', '.join(twice)} appear more than once; keep one"
            )
        return [self.keys.index(k) if k in self.keys else None for k in keys]

    def shown(self):
        """The header as found, for a message: control characters escaped (``printable``)."""
        text = self.delimiter.join(self.names)
        if self.delimiter == ",":
            return printable(text)
        return f"{text!r}, {DELIMITER_NAMES[self.delimiter]}"

    def label(self, index):
        return printable(self.keys[index]) if index < len(self.keys) else f"column {index + 1}"


DELIMITER_NAMES = {",": "comma-separated", ";": "semicolon-separated", "\t": "tab-separated"}


def open_csv(opened, wanted, log=None):
    """Return (header, csv reader positioned after it); the reader numbers lines from 1.

    log, a ``LineLog``, is given every line the reader is handed, numbered as it numbers
    them (``csv_rows`` needs them again for runs it splits one record at a time).
    """
    blocks = opened.blocks = Pushback(opened.line_blocks())
    seen = []  # the lines read to find the header, handed to the reader again
    for block in blocks:
        rest = iter(block)
        for text in rest:
            seen.append(text)
            if text.strip():
                break
        else:
            continue
        break
    else:
        raise SourceError(f"{opened.path}: the file is empty (expected a header row)")
    header_text = seen[-1]
    delimiter = max(DELIMITERS, key=lambda d: _fields_named(header_text, d, wanted))
    if log is None:
        lines = chain(seen, rest, chain.from_iterable(blocks))
    else:  # the header's block after the header is a block of its own (csv_runs)
        after = list(rest)
        if after:
            blocks.push(after)
        lines = chain.from_iterable(log.record(seen, blocks))
    reader = csv.reader(lines, delimiter=delimiter)
    opened.counter = reader
    try:
        names = next(r for r in reader if r)
    except csv.Error as exc:
        raise SourceError(f"{opened.path}: the header row is not valid CSV ({exc})") from exc
    return CsvHeader(opened.path, [n.strip() for n in names], delimiter, reader.line_num), reader


def _fields_named(text, delimiter, wanted):
    try:
        names = next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error:
        return 0
    keys = {normalized(n) for n in names}
    return sum(normalized(f) in keys for f in wanted)


def rewritten(record, delimiter):
    """The record as one CSV text, for the rejects file's ``raw`` column.

    The csv module hands over fields, not the text it split, so this is the record as the
    reader saw it: a quote left open shows as the swallowed lines inside one quoted field.
    """
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerow(record)
    return out.getvalue()[:-2]  # the terminator makes fields holding CR or LF quoted


def _picker(positions, width):
    """Return a C-level function taking a record to the tuple of the wanted fields (a
    Python one when the file lacks an optional field, which reads as None)."""
    if None in positions:
        return lambda record: tuple(None if p is None else record[p] for p in positions)
    if positions == list(range(width)):
        return tuple
    if len(positions) == 1:
        get = itemgetter(positions[0])
        return lambda record: (get(record),)
    return itemgetter(*positions)


FAST_RECORDS = 256  # records the csv module splits at once before they are checked


class Pushback:
    """An iterator that can be handed back the item it last gave."""

    def __init__(self, iterator):
        self.iterator = iterator
        self.back = []

    def __iter__(self):
        return self

    def __next__(self):
        return self.back.pop() if self.back else next(self.iterator)

    def push(self, item):
        self.back.append(item)


def csv_rows(path, wanted, track=None, encoding=None):
    """Return an iterator of (line, values) per record of a data file after its header;
    blank lines are skipped. ``track(opened)`` is told the open file (for progress)."""
    return chain.from_iterable(csv_runs(path, wanted, track, encoding=encoding))


def csv_runs(path, wanted, track=None, whole_numbers=False, encoding=None, after_line=0):
    """Return an iterator of runs of (line, values), in file order.

    The csv module splits ``FAST_RECORDS`` records at a time, in C. A run where every record
    is one line of the right width (line numbers then follow from the count) goes out as one
    ``zip``, with no Python step per row; any other run (a blank line, a record over several
    lines, a wrong field count, a csv error) is split again, one record at a time, from the
    same lines (``LineLog``), so both ways give the same verdicts.

    With whole_numbers (a table of whole numbers, ``crossdb.loading.columns``), each block of lines
    that starts where the csv module has finished every record before it is first offered
    to ``parsers.parse``; a block it takes goes out as one ``columns.Block``, never seen by
    the csv module, and any other goes to the csv module as above.

    after_line: start after that line, where a record ends (a resumed run's settled prefix,
    ``crossdb.resume``): the lines before it are split but never parsed.
    """
    return _csv_runs(path, wanted, track, whole_numbers, encoding, after_line)


def _skip_lines(opened, log, line, after_line):
    """Read past the lines up to after_line, as whole-number blocks are; return the last
    line passed (the file may end first)."""
    while line < after_line:
        block = next(opened.blocks, None)
        if block is None:
            break
        block = block if type(block) is list else list(block)
        if len(block) > after_line - line:
            opened.blocks.push(block[after_line - line :])
            block = block[: after_line - line]
        log.skip(len(block))
        opened.skipped += len(block)
        line += len(block)
    return line


def _csv_runs(path, wanted, track, whole_numbers, encoding, after_line=0):
    with Opened(path, encoding) as opened:
        if track is not None:
            track(opened)
        log = LineLog()
        header, reader = open_csv(opened, wanted, log)
        positions = header.positions(wanted)
        pick = _picker(positions, len(header.names))
        width = len(header.names)
        line = header.line  # the last line the reader has handed out
        if after_line > line:
            line = _skip_lines(opened, log, line, after_line)
        while True:
            log.forget_before(line + 1)
            handed = log.next - 1  # lines given to the csv module so far
            if whole_numbers and handed == line:  # it has split every line it was given
                block = next(opened.blocks, None)
                if block is None:
                    return
                parsed = None
                if type(block) is list:
                    parsed = parsers.parse(block, header.delimiter, width, positions, line + 1)
                if parsed is not None:
                    log.skip(len(block))
                    opened.skipped += len(block)
                    line += len(block)
                    yield parsed
                    continue
                opened.blocks.push(block)
                handed += len(block) if type(block) is list else 0
            run = min(FAST_RECORDS, handed - line) if handed > line else FAST_RECORDS
            try:
                records = list(islice(reader, run))
            except csv.Error:
                records = None
            end = opened.lines_read()
            if records is not None:
                if not records:
                    return
                if end - line == len(records) and set(map(len, records)) == {width}:
                    yield zip(range(line + 1, end + 1), map(pick, records), strict=True)
                    line = end
                    continue
            again = csv.reader(log.lines(line + 1, end), delimiter=header.delimiter)
            yield list(_one_by_one(header, again, pick, line, opened.overlong))
            line = end


def _one_by_one(header, reader, pick, offset, overlong):
    """Yield (line, values) per record of reader, whose line 1 is the file's offset + 1."""
    width = len(header.names)
    line = offset
    while True:
        try:
            for record in reader:
                first = line + 1
                line = offset + reader.line_num
                if len(record) == width:
                    # a record over several lines keeps its fields: the validator
                    # rejects the line break, naming the field and the lines
                    yield (line if line == first else Lines(first, line)), pick(record)
                elif record:
                    yield _malformed(header, record, first, line)
                elif line in overlong:  # else a blank line
                    yield line, Malformed(too_long())
            return
        except csv.Error as exc:  # the reader goes on at the next line
            first, line = line + 1, offset + reader.line_num
            yield _spanning(first, line), _csv_error(exc)


class LineLog:
    """The blocks of lines handed to a csv reader, numbered, while a caller may need them.

    ``csv_rows`` splits records in runs and, for a run that is not plain, splits the same
    lines again one record at a time; this keeps them, from the first line of the current
    run on (a run's lines, never the file).
    """

    def __init__(self):
        self.blocks: deque[tuple[int, list[str]]] = deque()  # (number of the first line, [lines])
        self.next = 1
        self.keep_from = 1  # the first line of the current run

    def record(self, first, blocks):
        """Pass first, then blocks, of lines through, remembering each with its first line
        number. A block the reader has finished keeps only the current run's lines."""
        yield self._remember(first)
        del first  # not held for the whole file by this frame
        while True:
            self._trim()  # before the next block is read and split, not after
            block = next(blocks, None)
            if block is None:
                return
            yield self._remember(block)
            block = None  # nor by this one, while the next block is split

    def skip(self, count):
        """Number past count lines the reader is not given."""
        self.next += count
        self.keep_from = self.next

    def _remember(self, block):
        lines = block if isinstance(block, list) else list(block)
        self.blocks.append((self.next, lines))
        self.next += len(lines)
        return lines

    def _trim(self):
        if not self.blocks:
            return
        start, lines = self.blocks[-1]
        if self.keep_from > start:
            self.blocks[-1] = (self.keep_from, lines[self.keep_from - start :])

    def lines(self, first, last):
        """The text of lines first to last (1-based, inclusive)."""
        out = []
        for start, lines in self.blocks:
            if start + len(lines) > first and start <= last:
                out.extend(lines[max(first - start, 0) : last - start + 1])
        return out

    def forget_before(self, first):
        """Let go of the lines before first, where the next run begins."""
        self.keep_from = first
        blocks = self.blocks
        while blocks and blocks[0][0] + len(blocks[0][1]) <= first:
            blocks.popleft()


def _spanning(first, last):
    return Lines(first, last) if last > first else last


def _malformed(header, record, first, last):
    if last > first:
        broken = next((i for i, f in enumerate(record) if "\n" in f or "\r" in f), None)
        what = "a field" if broken is None else header.label(broken)
        reason = f"{what} contains a line break (an unbalanced quote?)"
    else:
        reason = f"expected {len(header.names)} fields, got {len(record)}"
    return _spanning(first, last), Malformed(reason, rewritten(record, header.delimiter))


def _csv_error(exc):
    if "field larger than field limit" in str(exc):
        return Malformed(too_long("field"))
    return Malformed(f"not valid CSV ({exc})")


def csv_records(opened, wanted):
    """Return (header, records) for our own CSV file: records yields (line, fields, problem).

    For the rejects file, whose quoted cells may hold line breaks (we wrote them) and whose
    rows the caller sorts by their ``table`` column before picking fields. ``fields`` is the
    record's list of cells (None when the csv module could not split it); ``problem`` is a
    ``Malformed`` or None.
    """
    header, reader = open_csv(opened, wanted)
    return header, _records(opened, header, reader)


def _records(opened, header, reader):
    width = len(header.names)
    line = header.line
    while True:
        try:
            for record in reader:
                first, line = line + 1, reader.line_num
                where = _spanning(first, line)
                if len(record) == width:
                    yield where, record, None
                elif record:
                    reason = f"expected {width} fields, got {len(record)}"
                    yield where, record, Malformed(reason, rewritten(record, header.delimiter))
                elif line in opened.overlong:
                    yield line, None, Malformed(too_long())
            return
        except csv.Error as exc:
            first, line = line + 1, reader.line_num
            yield _spanning(first, line), None, _csv_error(exc)


JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}


def jsonl_rows(path, wanted, track=None, encoding=None):
    """Yield (line, values) per non-blank line, reading at most MAX_RECORD characters of it."""
    with Opened(path, encoding) as opened:
        if track is not None:
            track(opened)
        yield from _jsonl_rows(opened, wanted)  # json.loads dwarfs the extra generator


def _jsonl_rows(opened, wanted):
    for numbers, texts in _jsonl_line_runs(opened, BLOCK):
        for number, text in zip(numbers, texts, strict=True):
            yield _jsonl_row(number, text, wanted)


def _jsonl_line_runs(opened, size):
    """(numbers, texts) of the non-blank lines, reading size characters at a time: each
    line's number and its text without the line end, or None for a line longer than
    MAX_RECORD, which is never held whole.

    Lines end at ``\\n``, ``\\r\\n`` and ``\\r``, as the file object's ``readline`` splits
    them (a CR and the LF of its CRLF may arrive in two reads: a text is cut after its
    last LF, or after a CR that is not its last character). A block of LF lines, the
    common case, is split and numbered in C, with no Python step per line.
    """
    number, carry = 0, ""
    try:
        while block := opened.read(size):
            text = carry + block if carry else block
            cut = (text.rfind("\n") + 1) or (text.rfind("\r", 0, len(text) - 1) + 1)
            if not cut:
                if len(text) - text.endswith("\r") > MAX_RECORD:  # a CR at the end ends it
                    number += 1
                    yield [number], [None]
                    carry = _past_line_end(opened, text.endswith("\r"))
                else:
                    carry = text
                continue
            carry = text[cut:]
            lines = _lines_of(text[:cut])
            first = number + 1
            number += len(lines)
            if max(map(len, lines)) <= MAX_RECORD and all(map(str.strip, lines)):
                yield range(first, number + 1), lines
            else:
                yield _numbered(lines, first)
        opened.check_unchanged()  # before the last line, as Opened.line_blocks does
        if carry:  # the last line has no line end (and a CR may end lines before it)
            yield _numbered(_lines_of(carry + "\n"), number + 1)
    except READ_ERRORS as exc:
        raise opened.read_error(exc) from exc


def _lines_of(text):
    """The lines of text, which ends with a line end, without their line ends."""
    if "\r" not in text:
        lines = text.split("\n")
    elif text.count("\r") == text.count("\r\n"):
        lines = text.replace("\r\n", "\n").split("\n")
    else:  # a CR alone ends a line too
        lines = [line.rstrip("\r\n") for line in io.StringIO(text, newline="")]
        lines.append("")
    lines.pop()  # after the last line end
    return lines


def _numbered(lines, first):
    """(numbers, texts) of lines numbered from first, blank ones left out, long ones None."""
    numbers: list[int] = []
    texts: list[str | None] = []
    for number, text in enumerate(lines, first):
        if len(text) > MAX_RECORD:
            numbers.append(number)
            texts.append(None)
        elif text.strip():
            numbers.append(number)
            texts.append(text)
    return numbers, texts


def _past_line_end(opened, after_cr):
    """Read past the end of an overlong line; return what follows it in the last block.
    after_cr: the text read so far ended with a CR (the LF of a CRLF may follow)."""
    if not after_cr:
        while block := opened.read(BLOCK):
            ends = [i for i in (block.find("\n"), block.find("\r")) if i >= 0]
            if not ends:
                continue
            end = min(ends)
            if block.startswith("\r\n", end):
                return block[end + 2 :]
            if block[end] == "\n" or end < len(block) - 1:
                return block[end + 1 :]
            break  # a CR ends the block: its LF may begin the next
        else:
            return ""
    following = opened.read(BLOCK)
    return following[1:] if following.startswith("\n") else following


def _jsonl_row(number, text, wanted):
    if text is None:
        return number, Malformed(too_long())
    record = _json_record(text)
    if isinstance(record, str):
        return number, Malformed(record, text)
    optional = optional_of(wanted)
    missing = [n for n in wanted if n not in record]
    if missing:
        record = _by_header_name(record)
        if isinstance(record, str):
            return number, Malformed(record, text)
        keys = [normalized(n) for n in wanted]  # a mapped key may be written in any case
        missing = [
            n for n, k in zip(wanted, keys, strict=True) if k not in record and n not in optional
        ]
        if missing:
            return number, Malformed(f"missing field(s) {', '.join(missing)}", text)
        return number, tuple(record.get(k) for k in keys)
    return number, tuple(record.get(n) for n in wanted)


def _by_header_name(record):
    """record keyed as a CSV header is matched (``normalized``: any case, spaces, a BOM),
    or a str saying which keys collide. Only for a line that lacks a wanted key as
    written, so lines keyed exactly (every fast path) pay nothing; a key written exactly
    wins over one that only matches this way."""
    keyed: dict[str, tuple[str, Any]] = {}
    for key, value in record.items():
        name = normalized(key)
        if name in keyed:
            return (
                f"field {printable(name)} is given twice "
                f"({printable(keyed[name][0])!r} and {printable(key)!r})"
            )
        keyed[name] = (key, value)
    return {name: value for name, (_key, value) in keyed.items()}


JSONL_RUN = 4096  # lines offered to parsers.parse_jsonl at once
JSONL_RUN_CHARS = 4 * BLOCK  # and at most about this many characters of them


def jsonl_runs(path, wanted, track=None, whole_numbers=False, encoding=None):
    """Return an iterator of runs of (line, values), in file order: exactly what
    ``jsonl_rows`` gives, read ``JSONL_RUN`` lines (fewer when they are long) at a time.

    Each run is parsed with one call per line into C (``_scanned``), falling back to the
    line-by-line path when any line is not one JSON object alone. With whole_numbers, a run
    is first offered to ``parsers.parse_jsonl``, and one it takes goes out as one
    ``columns.Block``.
    """
    with Opened(path, encoding) as opened:
        if track is not None:
            track(opened)
        for numbers, texts in _jsonl_line_runs(opened, JSONL_RUN_CHARS):
            for start in range(0, len(texts), JSONL_RUN):
                part = slice(start, start + JSONL_RUN)
                yield _jsonl_run(numbers[part], texts[part], wanted, whole_numbers)


def _jsonl_run(numbers, texts, wanted, whole_numbers):
    """One run of numbered lines as a Block, or as rows."""
    if None not in texts:  # no overlong line
        if whole_numbers and (block := parsers.parse_jsonl(texts, numbers, wanted)):
            return block
        if (values := _scanned(texts, wanted)) is not None:
            return list(zip(numbers, values, strict=True))
    return [_jsonl_row(number, text, wanted) for number, text in zip(numbers, texts, strict=True)]


# The C scanner json.loads itself ends in, with json.loads's own parse_float.
SCAN_JSON = json.JSONDecoder(parse_float=NumberText).scan_once  # type: ignore[attr-defined]


def _scanned(texts, wanted):
    """The wanted values of each line, or None unless every line is one JSON object with
    every wanted key and nothing around it (``json.loads`` then gives the same objects:
    it skips spacing, which ``SCAN_JSON`` does not, and calls it the same way)."""
    joined = "".join(texts)  # every line opens one object: count the brackets beyond it
    if joined.count("{") - len(texts) + joined.count("[") >= MAX_NESTING and any(
        map(_too_deep, texts)
    ):
        return None
    try:
        scanned = list(map(SCAN_JSON, texts, repeat(0)))
    except (StopIteration, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    if list(map(itemgetter(1), scanned)) != list(map(len, texts)):
        return None  # something after the object: json.loads names it
    records = list(map(itemgetter(0), scanned))
    if set(map(type, records)) != {dict}:
        return None
    try:
        values = list(map(itemgetter(*wanted), records))
    except KeyError:
        return None  # a missing field: the row path names it
    return values if len(wanted) > 1 else [(v,) for v in values]


MAX_NESTING = 200  # arrays and objects in one another on one line


def _too_deep(text):
    """Whether text nests arrays and objects more than MAX_NESTING deep (outside strings).

    json's scanner would stop at Python's recursion limit, which counts the caller's frames
    too, so the same line could pass in one place and fail in another; this limit is the
    same everywhere. Only a line with that many brackets is walked.
    """
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _json_record(text):
    """Return the object on one line, or a str saying why it is not one."""
    if _too_deep(text):
        return "not valid JSON (nested too deeply)"
    try:
        # Decimals keep the text they were written as, so 1e2 meets the same rule as in a
        # CSV file (no exponent) instead of arriving as the float 100.0
        record = json.loads(text, parse_float=NumberText)
    except json.JSONDecodeError as exc:
        column = exc.pos + 1  # the line is the whole document: position counts from its start
        at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at"
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            if exc.msg == "Expecting value":
                return f"not valid JSON (the line ends where a value should be, at column {column})"
            return f"not valid JSON (the line ends early: {exc.msg}{at} column {column})"
        return f"not valid JSON ({exc.msg}{at} column {column})"
    except ValueError:  # a whole number of more digits than int() takes: the rules judge it
        record = json.loads(text, parse_float=NumberText, parse_int=_whole_or_text)
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    if not isinstance(record, dict):
        kind = "null" if record is None else JSON_TYPES.get(type(record), "true/false")
        return f"expected a JSON object, got {kind}"
    return record


def _whole_or_text(text):
    """A JSON whole number as json.loads makes it, or kept as its text when it has more
    digits than Python turns into an int (4,300): a 5,000-digit id is then one row's
    rejection ("id must be at most ..."), not the line's, and not a crash."""
    return NumberText(text) if len(text.lstrip("-")) > sys.get_int_max_str_digits() else int(text)


def changed(path, before, now):
    """Say how path changed between two ``os.stat`` results (None: it did not). A file
    renamed over it counts; a file removed after it was read does not (now is None)."""
    if now is None or (now.st_ino, now.st_size, now.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    ):
        return None
    if now.st_ino != before.st_ino:
        how = "replaced by another file"
    elif now.st_size != before.st_size:
        how = f"{before.st_size:,} bytes when opened, {now.st_size:,} now"
    else:
        how = "modified since it was opened"
    return f"{path}: changed while it was read ({how}), so it may still be being written"


def refuse_json_array(opened):
    """Raise SourceError if a .jsonl file holds one JSON document over many lines instead
    of one object per line: each line would be rejected but the last object's, which loads
    (a pretty-printed array was half loaded that way). Reads the first lines only."""
    text = opened.read(BLOCK).lstrip()
    first_line = text.split("\n", 1)[0].strip()
    if text.startswith("["):
        what, jq = "a JSON array", "'.[]'"
    elif first_line == "{":
        what, jq = "pretty-printed JSON", "."
    else:
        return
    raise SourceError(
        f"{opened.path}: this is {what}, not JSON Lines (one object per line); "
        f"jq -c {jq} {opened.path.name} writes it as JSON Lines"
    )


def first_jsonl_keys(opened: "Opened") -> list[str] | None:
    """The keys of the object on the first non-blank line, as written, or None when that
    line holds no object (its row is rejected for it): JSONL has no header, so its first
    object stands for one when a mapped key is looked for before the load."""
    for _numbers, texts in _jsonl_line_runs(opened, BLOCK):
        for text in texts:
            record = None if text is None else _json_record(text)
            return list(record) if isinstance(record, dict) else None
    return None


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None
