"""The resume row: a fresh ``insert_data --from`` load SIGKILLed, writers and all, once half
the workload's rows are committed; then the same command again, timed, finishes it.

The kill is decided by the rows committed, polled from the databases, never by a time, so a
slow or busy machine kills at the same point of the load. After the resume, the databases
must hold exactly what a clean run leaves (``sqlite_digest`` here, on PostgreSQL
``bench.postgres.state_digest``), and the bench stops if they do not.
"""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from bench import measure
from bench.measure import BenchFailed

POLL = 0.02  # seconds between two counts of the committed rows
GONE_WITHIN = 600  # seconds a killed load's processes (or server backends) may take to end


class CleanState:
    """The end state every finished load of one backend must leave over the rounds (the
    fresh CSV load's: the re-runs, the resume and a peer loader are held to it), and the
    share of the rows committed at each kill of the resume row."""

    def __init__(self, total):
        self.total = total
        self.clean = None  # the digest of the first fresh load's state
        self.killed = []

    def remember_clean(self, digest):
        """A fresh load's end state; every fresh load of the run must leave the same."""
        if self.clean is None:
            self.clean = digest
        self.same_as_clean(digest, "a fresh load")

    def same_as_clean(self, digest, label):
        if self.clean is None:
            raise BenchFailed(f"{label}: no clean load was measured before it to compare with")
        if digest != self.clean:
            raise BenchFailed(
                f"{label} left the databases other than a clean run leaves them "
                f"(state digest {digest[:12]}, clean {self.clean[:12]})"
            )

    def label(self):
        """The committed share at the kills, as the row's label says it: "52%" or "50-55%"."""
        shares = sorted(round(100 * n / self.total) for n in self.killed)
        if not shares:
            return "?"
        low, high = shares[0], shares[-1]
        return f"{low}%" if low == high else f"{low}-{high}%"


def kill_at_half(args, env, committed, total):
    """Start manage.py args in a process group of its own, poll committed() until it counts
    half of total, then SIGKILL the whole group and wait until none of it is left (the
    caller counts what stayed committed once the databases have settled too).

    BenchFailed (one line) when the load ends by itself before that."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, str(measure.ROOT / "manage.py"), *args],
            env=measure.clean_environment(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=measure.ROOT,
            start_new_session=True,
        )
        half = (total + 1) // 2
        while (seen := committed()) < half and process.poll() is None:
            time.sleep(POLL)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if process.wait() != -signal.SIGKILL:
            stderr.seek(0)
            lines = stderr.read().decode(errors="replace").strip().splitlines()
            raise BenchFailed(
                f"the load to kill ended by itself (exit {process.returncode}) with "
                f"{seen:,} of {total:,} rows committed, before it was killed at half"
                + (f": {lines[-1]}" if lines else "")
            )
    wait_until_gone(process.pid)


def wait_until_gone(group):
    """Wait until no live process is left in the process group (its writers die with the
    kill; a zombie left to an init that does not reap is not alive)."""
    deadline = time.monotonic() + GONE_WITHIN
    while _alive_in(group):
        if time.monotonic() > deadline:
            raise BenchFailed(f"processes of the killed load still run after {GONE_WITHIN} s")
        time.sleep(POLL)


def _alive_in(group):
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp
            return True
    return False


def sqlite_committed(data_dir, tables):
    """A poll of the rows committed in data_dir's files (a reader never blocks the writers
    of a WAL database)."""

    def committed():
        total = 0
        for table in tables:
            with closing(sqlite3.connect(Path(data_dir) / f"{table}.db")) as db:
                total += db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        return total

    return committed


def sqlite_digest(data_dir, tables):
    """The state a run leaves in data_dir: each table's index definitions and every row,
    by id (the rows tests/test_reliability.py's kill loop compares with a clean run's),
    hashed as they are read."""
    digest = hashlib.sha256()
    for table in tables:
        with closing(sqlite3.connect(Path(data_dir) / f"{table}.db")) as db:
            indexes = db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "ORDER BY name",
                (table,),
            ).fetchall()
            digest.update(repr((table, indexes)).encode())
            rows = db.execute(f'SELECT * FROM "{table}" ORDER BY id')
            while chunk := rows.fetchmany(10_000):
                digest.update(repr(chunk).encode())
    return digest.hexdigest()
