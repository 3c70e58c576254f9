"""Whole-number arrays packed as PostgreSQL's binary COPY data, in C (numpy)."""

from collections.abc import Sequence

import numpy as np

from crossdb.loading.idsets import within

# PostgreSQL's binary COPY stream: signature, flags, header extension length; then per row
# the field count and each field as its length and its big-endian bytes; then -1.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
COPY_WIDTHS = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2"}
COPY_RANGES = {name: (np.iinfo(code).min, np.iinfo(code).max) for name, code in COPY_WIDTHS.items()}


def copy_payload(types: Sequence[str], values: np.ndarray) -> bytes | None:
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


# Each whole-number type's binary send function: its value as big-endian bytes, no length.
SEND_FUNCTIONS = {"bigint": "int8send", "integer": "int4send", "smallint": "int2send"}


def from_send(types: Sequence[str], data: bytes, count: int) -> np.ndarray | None:
    """count rows sent as the concatenation of each column's send function
    (``SEND_FUNCTIONS``, ``string_agg`` over the rows) as one int64 array; None when the
    bytes do not hold count rows (a NULL drops its row from ``string_agg``).

    A re-run reads back every row it loads: one value of a million rows' bytes costs the
    client a few array passes, where a cursor's tuples or a COPY's rows (one Python call
    each) cost seconds."""
    row = np.dtype([(f"value{i}", COPY_WIDTHS[name]) for i, name in enumerate(types)])
    if len(data) != count * row.itemsize:
        return None
    rows = np.frombuffer(data, dtype=row, count=count)
    values = np.empty((count, len(types)), dtype=np.int64)
    for i in range(len(types)):
        values[:, i] = rows[f"value{i}"]
    return values
