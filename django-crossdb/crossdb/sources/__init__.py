"""Where rows come from: a directory of CSV/JSONL files (maybe gzipped), a rejects file fed
back, or a generator.

Every source has the same methods, so the loader never asks which one it has:

* ``tables()``: the tables it has rows for, in commit order;
* ``check()``: raise ``SourceError`` for anything that must stop the run (a missing
  directory, file or column) before anything is written;
* ``rows(table)``: ``(line, values)`` pairs in the shape of ``crossdb.loading.rows``, streamed;
* ``runs(table)``, optional: the same rows in runs, each an iterable of pairs or, for a
  table of whole numbers, a ``crossdb.loading.columns.Block`` (the loader reads ``rows``
  otherwise);
* ``warnings()``: one line per input that looks meant for a table but is not read;
* ``input_paths()``: the resolved files it reads, so outputs never overwrite them;
* ``expected(table)``: a ``crossdb.loading.rows.Expected`` for progress bars and their ETA;
* ``check_unchanged()``, optional: raise ``SourceError`` if a file it read has changed
  since it was opened (still being written), once the load is done.

Modules: ``reading`` (bytes to records, in bounded memory), ``files`` (a directory),
``rejects`` (the rejects file), ``generated`` (rows made up for any registry),
``mapping`` (which column feeds which field: ``--map``, ``--map-file``).
"""

import os
from pathlib import Path

from crossdb.sources.files import FileSource, is_data_file_name
from crossdb.sources.mapping import ColumnMap, MappingError
from crossdb.sources.reading import MAX_RECORD, SourceError, check_encoding
from crossdb.sources.rejects import RejectsFileSource

__all__ = [
    "MAX_RECORD",
    "ColumnMap",
    "FileSource",
    "MappingError",
    "RejectsFileSource",
    "SourceError",
    "source_for_path",
]


def source_for_path(
    path: str | os.PathLike[str],
    encoding: str | None = None,
    mapping: ColumnMap | None = None,
) -> FileSource | RejectsFileSource:
    """A directory of files, or a rejects CSV being fed back; encoding: of the files (None:
    UTF-8), any text codec Python knows (else SourceError); mapping: which column feeds
    which field (``crossdb.sources.mapping``; None: each field's own name)."""
    check_encoding(encoding)
    path = Path(path)
    if path.is_file() and is_data_file_name(path.name):
        raise SourceError(
            f"--from {path}: give the directory that holds it, not the file: --from {path.parent}"
        )
    if path.is_file():
        return RejectsFileSource(path, encoding, mapping)
    return FileSource(path, encoding, mapping)
