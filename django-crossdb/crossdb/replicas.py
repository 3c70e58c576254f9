"""Read replicas of the routed databases: which there are, how far behind each is, and
whether reads may use it.

A project lists, per primary alias, the aliases of its PostgreSQL streaming replicas::

    CROSSDB = {"REPLICAS": {"orders_db": ["orders_db_replica_1"]}}

each a ``DATABASES`` entry with ``ENGINE = "crossdb.backends.replica"`` (a PostgreSQL
backend whose reads fall back to the primary when the replica fails them). No replica
means every read goes to the primary, as before. Writes, the guard, deletes, migrations
and the loader always name the primary; only reads routed by ``crossdb.causal`` (the
router, the admin's lists, the overview, ``check_integrity --replica``) come here.

Every process keeps a small status per replica, refreshed at most once per
``REPLICA_CHECK_SECONDS``: its replay position (``pg_last_wal_replay_lsn()``), its lag
behind its primary in bytes (the primary's ``pg_current_wal_lsn()`` minus that) and in
seconds (since the last replayed transaction, 0 when nothing is left to replay). A replica
that cannot be reached, is not in recovery, or lags past ``REPLICA_MAX_LAG_SECONDS`` or
``REPLICA_MAX_LAG_BYTES`` is skipped: reads go to the primary, one log line says why when
it stops being used and one when it is used again, and nothing is raised to the reader.
A failed replica is tried again after ``REPLICA_RETRY_SECONDS``.

Positions are WAL byte positions as integers (``pg_lsn - '0/0'``); a position is only
compared with positions of the same primary cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from crossdb import conf

log = logging.getLogger(__name__)

ENGINE = "crossdb.backends.replica"

# Reads served, by alias (a replica's or a primary's), in this process: the share of
# reads replicas take (bench/replicas.py reports it).
SERVED: Counter[str] = Counter()

REPLICA_STATUS_SQL = (
    "SELECT pg_is_in_recovery(), "
    "(pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, "
    "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8"
)
REPLAY_SQL = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
PRIMARY_POSITION_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"


def configured() -> dict[str, list[str]]:
    """{primary alias: [replica aliases]}, from the settings, read on each call."""
    return {p: list(r) for p, r in (conf.get("REPLICAS") or {}).items() if r}


def of(primary: str) -> list[str]:
    """The replicas of primary (none: every read goes to it)."""
    return configured().get(primary, [])


def primary_of(alias: str) -> str | None:
    """The primary alias a replica alias belongs to, or None for any other alias."""
    for primary, aliases in configured().items():
        if alias in aliases:
            return primary
    return None


def is_replica(alias: str) -> bool:
    return primary_of(alias) is not None


@dataclass
class Status:
    """What this process last saw of one replica."""

    alias: str
    primary: str
    replay: int | None = None  # replayed WAL position
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    paused: bool = False
    error: str | None = None  # why it cannot be read (unreachable, not a replica)
    checked: float = 0.0  # time.monotonic() of the last full check
    replay_checked: float = 0.0  # of the last replay position read
    retry_at: float = 0.0  # a failed replica is not tried before this
    waited_out: int = 0  # a causal wait for this position gave up: do not wait again for it

    @property
    def reason(self) -> str | None:
        """Why reads do not use it now, or None when they may."""
        if self.error:
            return self.error
        max_bytes = int(conf.get("REPLICA_MAX_LAG_BYTES"))
        max_seconds = float(conf.get("REPLICA_MAX_LAG_SECONDS"))
        if self.lag_bytes is not None and self.lag_bytes > max_bytes:
            return f"{self.lag_bytes:,} bytes behind (more than {max_bytes:,})"
        if self.lag_seconds is not None and self.lag_seconds > max_seconds:
            return f"{self.lag_seconds:.1f} s behind (more than {max_seconds:g} s)"
        return None

    @property
    def usable(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        return {
            "alias": self.alias,
            "primary": self.primary,
            "replay": self.replay,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds,
            "paused": self.paused,
            "used": self.usable,
            "reason": self.reason,
        }


_lock = threading.Lock()
_statuses: dict[str, Status] = {}
_announced: dict[str, str | None] = {}  # alias -> the reason last logged (None: usable)


def _status(alias: str) -> Status:
    with _lock:
        status = _statuses.get(alias)
        if status is None or status.primary != primary_of(alias):
            status = _statuses[alias] = Status(alias, primary_of(alias) or "")
        return status


def forget() -> None:
    """Drop every status (tests, and a settings change)."""
    with _lock:
        _statuses.clear()
        _announced.clear()


def _announce(status: Status) -> None:
    """Log once when a replica stops being used (with why), and once when it is used
    again; a reason that changes while it stays unused says nothing more."""
    reason = status.reason
    with _lock:
        before = _announced.get(status.alias, None)
        known = status.alias in _announced
        _announced[status.alias] = reason
    if reason is not None and (before is None):
        log.warning(
            "replica %s of %s is not used, reads go to the primary: %s",
            status.alias,
            status.primary,
            reason,
        )
    elif reason is None and known and before is not None:
        log.warning("replica %s of %s is used again", status.alias, status.primary)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _on_replica(alias: str, sql: str) -> tuple:
    """Run sql on the replica's own connection, never falling back to the primary."""
    connection: Any = connections[alias]  # a replica's wrapper: crossdb.replicas' own attribute
    before = getattr(connection, "fallback", False)
    connection.fallback = False
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    except DatabaseError:
        connection.close()
        raise
    finally:
        connection.fallback = before


def primary_position(primary: str) -> int:
    """The primary's current WAL position (after a commit returned, it covers that commit)."""
    with connections[primary].cursor() as cursor:
        cursor.execute(PRIMARY_POSITION_SQL)
        return int(cursor.fetchone()[0])


def failed(alias: str, exc: BaseException) -> None:
    """A read on the replica failed (it went down, or recovery cancelled it): skip it for
    REPLICA_RETRY_SECONDS and say so once."""
    status = _status(alias)
    status.error = f"unreachable ({_one_line(exc)})"
    status.retry_at = time.monotonic() + float(conf.get("REPLICA_RETRY_SECONDS"))
    status.checked = time.monotonic()
    _announce(status)


def refresh(alias: str) -> Status:
    """Check the replica now: replay position, lag in bytes and seconds, reachability."""
    status = _status(alias)
    now = time.monotonic()
    try:
        recovering, replay, paused, since = _on_replica(alias, REPLICA_STATUS_SQL)
    except DatabaseError as exc:
        failed(alias, exc)
        return status
    status.checked = status.replay_checked = now
    if not recovering:
        status.error = "not a replica (it is not in recovery)"
        status.retry_at = now + float(conf.get("REPLICA_RETRY_SECONDS"))
        _announce(status)
        return status
    try:
        current = primary_position(status.primary)
    except DatabaseError:
        current = None  # the primary's own trouble is not the replica's: keep its last lag
    status.error = None
    status.replay = None if replay is None else int(replay)
    status.paused = bool(paused)
    if current is not None and status.replay is not None:
        status.lag_bytes = max(current - status.replay, 0)
        status.lag_seconds = 0.0 if status.lag_bytes == 0 else max(float(since or 0.0), 0.0)
    _announce(status)
    return status


def current(alias: str) -> Status:
    """The replica's status, checked again when older than REPLICA_CHECK_SECONDS (a failed
    replica: not before REPLICA_RETRY_SECONDS)."""
    status = _status(alias)
    now = time.monotonic()
    if status.error and now < status.retry_at:
        return status
    if now - status.checked >= float(conf.get("REPLICA_CHECK_SECONDS")):
        return refresh(alias)
    return status


def replayed(alias: str, position: int, *, recheck_after: float = 0.005) -> bool:
    """Whether the replica has replayed position, reading its replay position again when
    the last one read is older than recheck_after seconds and falls short."""
    status = _status(alias)
    if status.replay is not None and status.replay >= position:
        return True
    if status.error or time.monotonic() - status.replay_checked < recheck_after:
        return False
    try:
        (replay,) = _on_replica(alias, REPLAY_SQL)
    except DatabaseError as exc:
        failed(alias, exc)
        return False
    status.replay_checked = time.monotonic()
    if replay is not None:
        status.replay = max(int(replay), status.replay or 0)
    return status.replay is not None and status.replay >= position


def statuses() -> list[Status]:
    """Every configured replica's status, checked now (the overview)."""
    return [refresh(alias) for aliases in configured().values() for alias in aliases]


def wait_for(alias: str, position: int, seconds: float) -> bool:
    """Wait up to seconds for the replica to replay position; False when it did not.

    A wait that gives up is remembered: later waits for that position or beyond do not
    wait again until the replica has replayed it, so a paused replica costs the bound once
    per process, not once per read."""
    status = _status(alias)
    if replayed(alias, position):
        return True
    gave_up = status.waited_out and (status.replay or 0) < status.waited_out <= position
    if seconds <= 0 or gave_up:
        return False
    deadline = time.monotonic() + seconds
    pause = 0.002
    while time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        if replayed(alias, position, recheck_after=0.0):
            status.waited_out = 0
            return True
        if status.error:
            return False
    status.waited_out = position
    log.warning(
        "replica %s of %s did not replay %s within %g s: reading %s's rows from the primary",
        alias,
        status.primary,
        lsn_text(position),
        seconds,
        status.primary,
    )
    return False


def lsn_text(position: int) -> str:
    """A position as PostgreSQL writes it (``0/3000148``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
