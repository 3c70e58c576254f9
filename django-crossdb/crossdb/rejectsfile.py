"""The rejects file's format: its columns and its cells, one format for the writer
(``LoadResult.write_rejects``) and the reader (``crossdb.sources.rejects``), so a file
written by one run is read back by the next exactly as it was.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection
from typing import Any

from crossdb import registry
from crossdb.registry import fields


def rejects_columns(tables: Collection[str] | None = None) -> tuple[str, ...]:
    """The rejects file's header for rows of tables (default: every table, what a rejects
    file may hold): what, where, why, every field, raw."""
    names = [t for t in registry.tables() if tables is None or t in tables]
    return (
        ("table", "line", "id", "reason")
        + tuple(dict.fromkeys(f for t in names for f in fields(t) if f != "id"))
        + ("raw",)
    )


# What a spreadsheet may run as a formula (OWASP, CSV injection), and the escape itself.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def safe_cell(value: Any) -> Any:
    """Return value as a rejects-file cell no spreadsheet runs: ``'`` before a formula start.

    ``'`` itself is escaped too, so ``unsafe_cell`` can drop exactly one leading ``'`` and
    every value reads back as it was (``-1`` -> ``'-1`` -> ``-1``).
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def unsafe_cell(text: str) -> str:
    """Undo ``safe_cell``, as a spreadsheet does: one leading ``'`` marks text."""
    return text[1:] if text.startswith("'") else text


def _raw_bytes(error: UnicodeError) -> tuple[bytes, int]:
    """Encode the characters UTF-8 cannot take back into the bytes they were read from.

    Undecodable input bytes are read as lone surrogates (surrogateescape) and go back out as
    the same bytes; a surrogate from a JSON escape such as ``"\\ud800"`` has no original
    bytes, so it is written as its surrogate encoding. Either way the rejects file holds the
    value as it was, still invalid until a person fixes it, instead of failing to be written.
    """
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        out += (
            bytes([code - 0xDC00])
            if 0xDC80 <= code <= 0xDCFF
            else char.encode("utf-8", "surrogatepass")
        )
    return bytes(out), error.end


codecs.register_error("multids-raw", _raw_bytes)
