"""Uploads for the admin's import pages: where they are kept, and how a file or a zip becomes
a directory ``insert_data --from`` reads.

Each upload gets a directory of its own in the import directory
(``CROSSDB["IMPORT_DIR"]``, by default ``crossdb-imports`` in ``crossdb.conf.state_dir()``),
named by a random token, mode 0700: ``data/`` holds the table files, ``meta.json`` who
uploaded what, then the preview, the run's report and rejects file. The import directory
is refused if it lies under ``STATIC_ROOT``, ``MEDIA_ROOT`` or a ``STATICFILES_DIRS``
entry: a web server may publish those, and uploads are other people's data.

Every name on disk is chosen here: a table's file is ``TABLE`` plus the suffix of the
format it is in (``.csv``, ``.jsonl``, either with ``.gz``); the client's file name only
says which format, and a zip member's name only which table. A zip is read member by member
and refused whole (nothing kept) for anything a hostile archive does: a path leaving its
directory (``../``, an absolute path, a drive), a symlink, an encrypted member, more
members than ``IMPORT_MAX_MEMBERS``, or more than ``IMPORT_MAX_UNPACKED_BYTES`` once
unpacked, counted as the bytes come out (a bomb's headers lie), gzipped members included.
Members that name no table are listed and ignored.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from crossdb import conf, registry
from crossdb.rules import printable
from crossdb.sources.files import SUFFIXES

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[0-9a-f]{32}")
CHUNK = 1024 * 1024
# Suffixes longest first, so "users.csv.gz" is gzipped CSV, not something ending in ".gz".
_SUFFIXES = sorted(SUFFIXES, key=len, reverse=True)


class Refused(Exception):
    """An upload that is not imported, with the one line that says why; ``status`` is the
    HTTP status the page answers with (413 for a size limit, else 400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def size_words(size: int) -> str:
    """A limit as people say it: "20 MB", "512 KB", or exactly: "2,000 bytes"."""
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor:,} {unit}"
    return f"{size:,} bytes"


def formats_words() -> str:
    return ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"


def _published_directories() -> Iterator[tuple[str, Path]]:
    for name in ("STATIC_ROOT", "MEDIA_ROOT"):
        value = getattr(settings, name, None)
        if value:  # Django's default MEDIA_ROOT is "", which would mean the working directory
            yield name, Path(value)
    for entry in getattr(settings, "STATICFILES_DIRS", ()):
        yield "STATICFILES_DIRS", Path(entry[1] if isinstance(entry, tuple | list) else entry)


def root() -> Path:
    """The import directory, created (0700) if missing; ImproperlyConfigured if a web
    server may publish it."""
    configured = conf.get("IMPORT_DIR")
    path = Path(configured) if configured else conf.state_dir() / "crossdb-imports"
    path = path.expanduser().resolve()
    for name, published in _published_directories():
        if path.is_relative_to(published.expanduser().resolve()):
            raise ImproperlyConfigured(
                f"CROSSDB['IMPORT_DIR'] ({path}) lies in {name} ({published}), which a web "
                "server may publish; choose a directory outside it"
            )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass
class Upload:
    """One upload's directory and what ``meta.json`` says of it."""

    token: str
    directory: Path
    meta: dict[str, Any]

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def rejects_path(self) -> Path:
        return self.directory / "rejects.csv"

    @property
    def report_path(self) -> Path:
        return self.directory / "report.json"

    @property
    def preview_path(self) -> Path:
        return self.directory / "preview.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "run.log"

    @property
    def tables(self) -> list[str]:
        return list(self.meta.get("tables", []))

    @property
    def run_id(self) -> int | None:
        run = self.meta.get("run")
        return run if isinstance(run, int) else None

    def save(self) -> None:
        """Write meta.json whole or not at all (a reader never sees half of it)."""
        temporary = self.directory / "meta.json.tmp"
        temporary.write_text(json.dumps(self.meta), encoding="utf-8")
        temporary.replace(self.directory / "meta.json")

    def claim_start(self) -> bool:
        """True for the first caller only: two confirmations of one upload start one run."""
        try:
            os.close(os.open(self.directory / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def create(owner: str, label: str, kind: str) -> Upload:
    """A new, empty upload directory belonging to owner (a user's primary key, as text);
    label is the client's file name, kept for the page to show and never used as a path."""
    token = secrets.token_hex(16)
    directory = root() / token
    directory.mkdir(mode=0o700)
    (directory / "data").mkdir(mode=0o700)
    upload = Upload(
        token,
        directory,
        {
            "owner": owner,
            "label": printable(label)[:200],
            "kind": kind,
            "tables": [],
            "ignored": [],
            "created": time.time(),
            "run": None,
        },
    )
    upload.save()
    return upload


def find(token: str) -> Upload | None:
    """The upload named by token, or None (not a token, never made, or deleted)."""
    if not TOKEN.fullmatch(token):
        return None
    return at(root() / token)


def at(directory: Path) -> Upload | None:
    """The upload kept in directory, or None (the load's process is given the directory:
    its own settings may not name the web process's import directory)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Upload(directory.name, directory, meta)


def suffix_of(name: str) -> str | None:
    """The format suffix name ends with (any case), or None."""
    lowered = name.lower()
    return next((s for s in _SUFFIXES if lowered.endswith(s)), None)


class _Budget:
    """Bytes left of what one upload may unpack to, across its members and gzip layers."""

    def __init__(self) -> None:
        self.limit = int(conf.get("IMPORT_MAX_UNPACKED_BYTES"))
        self.used = 0

    def spend(self, size: int, what: str) -> None:
        self.used += size
        if self.used > self.limit:
            raise Refused(
                f"{what} unpacks to more than {size_words(self.limit)} "
                "(CROSSDB['IMPORT_MAX_UNPACKED_BYTES']); nothing was imported",
                status=413,
            )


def _write(path: Path, chunks: Iterable[bytes], budget: _Budget, what: str) -> None:
    with open(path, "xb") as handle:  # a name of ours, in a directory of ours: never there
        os.chmod(path, 0o600)
        for chunk in chunks:
            budget.spend(len(chunk), what)
            handle.write(chunk)
    if path.name.endswith(".gz"):
        _count_gunzipped(path, budget, what)


def _count_gunzipped(path: Path, budget: _Budget, what: str) -> None:
    """Spend what a gzipped file unpacks to. A damaged one is left for the loader, which
    says what is wrong with it in its own words when it reads it."""
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                budget.spend(len(chunk), what)
    except (OSError, EOFError, zlib.error) as exc:
        log.info("%s: not readable as gzip (%s); the loader will say so", path.name, exc)


def store_table_file(upload: Upload, table: str, name: str, chunks: Iterable[bytes]) -> None:
    """Keep an uploaded file as table's file in upload's data directory; name (the
    client's) says only which format it is in."""
    suffix = suffix_of(name)
    if suffix is None:
        raise Refused(
            f"{printable(name)[:100]!r} is not a file the loader reads: give a "
            f"{formats_words()} file"
        )
    _write(upload.data_dir / f"{table}{suffix}", chunks, _Budget(), printable(name)[:100])
    upload.meta["tables"] = [table]
    upload.save()


def _table_for(base: str) -> str | None:
    return next(
        (t for t in registry.tables() for s in SUFFIXES if base == f"{t}{s}"),
        None,
    )


def _unsafe(name: str) -> bool:
    """Whether a member's path could leave the directory it is unpacked in (read as
    Windows would, too: a zip made there may use backslashes and drives)."""
    parts = re.split(r"[\\/]", name)
    return (
        name.startswith(("/", "\\"))
        or bool(re.match(r"[A-Za-z]:", name))
        or any(part == ".." for part in parts)
        or "\x00" in name
    )


def _members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's files, after refusing every member a hostile archive would hold."""
    files = []
    for info in archive.infolist():
        name = printable(info.filename)[:200]
        if _unsafe(info.filename):
            raise Refused(
                f"the zip holds {name!r}, a path outside its directory; nothing was imported"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Refused(f"the zip holds {name!r}, a symbolic link; nothing was imported")
        if info.flag_bits & 0x1:
            raise Refused(f"the zip holds {name!r}, which is encrypted; nothing was imported")
        if not info.is_dir():
            files.append(info)
    most = int(conf.get("IMPORT_MAX_MEMBERS"))
    if len(files) > most:
        raise Refused(
            f"the zip holds {len(files):,} files, more than {most:,} "
            "(CROSSDB['IMPORT_MAX_MEMBERS']); nothing was imported",
            status=413,
        )
    return files


def _base_name(info: zipfile.ZipInfo) -> str | None:
    """The member's file name if it is at the top of the zip or in one directory (the
    directory that was zipped), else None: deeper files are not the directory's own."""
    parts = info.filename.split("/")
    return parts[-1] if len(parts) <= 2 else None


def unpack_zip(upload: Upload, file: IO[bytes]) -> None:
    """Unpack the table files of a zip into upload's data directory (each under the name
    this module gives it), listing the other members in ``meta["ignored"]``."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise Refused(f"not a zip file ({printable(str(exc))[:100]}); give a .zip") from exc
    budget = _Budget()
    with archive:
        members = _members(archive)
        declared = sum(info.file_size for info in members)
        if declared > budget.limit:
            budget.spend(declared, "the zip")
        chosen: dict[str, str] = {}
        ignored = []
        for info in members:
            base = _base_name(info)
            table = _table_for(base) if base is not None else None
            if table is None:
                ignored.append(printable(info.filename)[:200])
                continue
            if table in chosen:
                raise Refused(
                    f"the zip holds two files for {table}: {chosen[table]!r} and "
                    f"{printable(info.filename)[:200]!r}; keep one"
                )
            chosen[table] = printable(info.filename)[:200]
            _unpack_member(archive, info, upload.data_dir / str(base), budget)
    if not chosen:
        names = ", ".join(f"{t}.csv" for t in registry.tables())
        shown = ", ".join(ignored[:5]) or "nothing"
        raise Refused(f"the zip holds no file named for a table ({names}, ...); it holds {shown}")
    upload.meta["tables"] = [t for t in registry.tables() if t in chosen]
    upload.meta["ignored"] = ignored
    upload.save()


def _unpack_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, budget: _Budget
) -> None:
    name = printable(info.filename)[:200]
    try:
        with archive.open(info) as member:
            _write(path, iter(lambda: member.read(CHUNK), b""), budget, name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise Refused(
            f"{name} in the zip is damaged ({printable(str(exc))[:100]}); nothing was imported"
        ) from exc
    except NotImplementedError as exc:  # a compression method zipfile does not have
        raise Refused(
            f"{name} in the zip is compressed in a way this server cannot read ({exc}); "
            "zip it again with the usual deflate"
        ) from exc
