"""Files named on the command line (``--rejects``, ``--report``): checked before any
input is read, opened at the end without ever waiting."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import IO, Any


class OutputError(Exception):
    """An output file that cannot be written; found before anything is read or stored."""


KINDS = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device"}


class OutputFile:
    """A file named on the command line (``--rejects``, ``--report``), written at the end.

    ``check()`` runs before any input is read, so a file that cannot be written stops the
    run before a row is stored, not after every row is committed (a missing directory, a
    directory, a file without write permission). Nothing here ever waits: opening a FIFO
    for writing blocks until a process reads it, for ever if none does, so a FIFO (or a
    device, or a socket) is opened at the check with ``O_NONBLOCK``, which fails at once
    when nobody reads it, and kept open for the end; a regular file is opened the same way
    at the end, so one replaced by a FIFO meanwhile fails instead of hanging.
    """

    def __init__(self, option: str, path: str | os.PathLike[str]) -> None:
        self.option = option  # "--report"
        self.path = Path(path)
        self.fd: int | None = None  # opened by check() when the path is not a regular file

    def __str__(self) -> str:
        return str(self.path)

    def check(self) -> None:
        """Raise OutputError, in one line naming the option, unless path can be written."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            self._check_directory()
            return
        except OSError as exc:
            raise self._error(exc.strerror) from exc
        if stat.S_ISDIR(mode):
            raise self._error("it is a directory; name a file")
        if stat.S_ISREG(mode):
            if not os.access(self.path, os.W_OK):
                raise self._error("cannot write it (permission denied)")
            return
        kind = next((k for test, k in KINDS.items() if test(mode)), "not a regular file")
        self.fd = self._open_without_waiting(os.O_WRONLY, kind)

    def _check_directory(self) -> None:
        directory = Path(os.path.abspath(self.path)).parent
        if not directory.is_dir():
            what = "no such directory" if not directory.exists() else "not a directory"
            raise self._error(f"{what}: {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise self._error(f"cannot create a file in {directory} (permission denied)")

    def _open_without_waiting(self, flags: int, kind: str = "a FIFO") -> int:
        """os.open(path) with O_NONBLOCK, which is then cleared: a FIFO nobody reads fails
        at once (ENXIO) instead of blocking; once open, writes wait for the reader."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise self._error(
                    f"{kind} that no process is reading; start its reader first, "
                    "or name a regular file"
                ) from exc
            raise self._error(exc.strerror) from exc
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd

    def open(self, **text: Any) -> IO[str]:
        """The file open for writing text (``text``: open()'s encoding, errors, newline)."""
        fd, self.fd = self.fd, None
        if fd is None:
            fd = self._open_without_waiting(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        return open(fd, "w", **text)  # noqa: SIM115 - the caller closes it

    def _error(self, why: str | None) -> OutputError:
        return OutputError(f"{self.option} {self.path}: {why}")


def open_for_writing(target: str | os.PathLike[str] | OutputFile, **text: Any) -> IO[str]:
    """target open for writing text, a file name or an ``OutputFile``."""
    if isinstance(target, OutputFile):
        return target.open(**text)
    return open(target, "w", **text)  # noqa: SIM115 - the caller closes it
