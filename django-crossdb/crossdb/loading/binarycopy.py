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


def unpack(types: Sequence[str], data: bytes) -> np.ndarray | None:
    """The rows of binary COPY data (``COPY ... TO STDOUT (FORMAT BINARY)``) of whole-number
    columns as one int64 array, the inverse of ``copy_payload``; None when a value is NULL
    (its row is shorter) or a type is not a fixed-width integer. Reading a million stored
    rows back this way costs a few array passes, where tuples from a cursor cost a second."""
    if any(t not in COPY_WIDTHS for t in types):
        return None
    layout = [("count", ">i2")]
    for i, name in enumerate(types):
        layout += [(f"size{i}", ">i4"), (f"value{i}", COPY_WIDTHS[name])]
    row = np.dtype(layout)
    header, trailer = len(COPY_SIGNATURE), len(COPY_TRAILER)
    body = len(data) - header - trailer
    if data[:11] != COPY_SIGNATURE[:11] or body < 0 or body % row.itemsize:
        return None
    rows = np.frombuffer(data, dtype=row, offset=header, count=body // row.itemsize)
    widths = [np.dtype(COPY_WIDTHS[name]).itemsize for name in types]
    if (rows["count"] != len(types)).any() or any(
        (rows[f"size{i}"] != width).any() for i, width in enumerate(widths)
    ):
        return None
    values = np.empty((len(rows), len(types)), dtype=np.int64)
    for i in range(len(types)):
        values[:, i] = rows[f"value{i}"]
    return values
