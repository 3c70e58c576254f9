"""The backend of a read replica: PostgreSQL, plus one promise: a read the replica cannot
serve is served by its primary, in the same call.

Why at this level: the router chooses the replica before the query runs, so a replica
that stops between that choice and the query (or whose connection the server ends, or
whose query recovery cancels: "conflict with recovery") would otherwise raise to the
reader, and a page would answer 500. Here the failure marks the replica unusable
(``crossdb.replicas.failed``: one log line, skipped for ``REPLICA_RETRY_SECONDS``) and the
statement runs again on the primary's connection, whose rows the caller then reads. The
primary has everything the replica had, so the reader loses nothing but speed.

Only statements outside a transaction on the replica are run again (the router never opens
one here); anything else raises as on any backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.db import InterfaceError, OperationalError, connections
from django.db.backends.postgresql import base as postgresql
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from crossdb import replicas

# SQLSTATEs of a replica that cannot serve a read now: the connection is gone or going
# (08xxx, 57P01-57P03) or recovery cancelled the statement (40001 on a standby).
RETRY_SQLSTATES = {"08000", "08003", "08006", "08001", "57P01", "57P02", "57P03", "40001"}


def _unservable(exc: BaseException, connection: DatabaseWrapper) -> bool:
    """Whether exc says the replica cannot serve reads, not that the statement is wrong."""
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate in RETRY_SQLSTATES:
        return True
    # No SQLSTATE: the client lost the server ("server closed the connection").
    return sqlstate is None and (connection.connection is None or connection.connection.closed)


if TYPE_CHECKING:
    _CursorBase = CursorWrapper
else:
    _CursorBase = object


class FallbackMixin(_CursorBase):
    """Run a statement the replica cannot serve again on the primary."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        try:
            return super().execute(sql, params)
        except (OperationalError, InterfaceError) as exc:
            replica = cast(DatabaseWrapper, self.db)  # made by DatabaseWrapper.make_cursor
            if not replica.may_fall_back() or not _unservable(exc, replica):
                raise
            self._to_primary(replica, exc)
            return super().execute(sql, params)

    def _to_primary(self, replica: DatabaseWrapper, exc: BaseException) -> None:
        replicas.failed(replica.alias, exc)
        primary = connections[replica.primary_alias]
        self.cursor = primary.cursor().cursor
        self.db = primary
        replica.close()


class FallbackCursor(FallbackMixin, CursorWrapper):
    pass


class FallbackDebugCursor(FallbackMixin, CursorDebugWrapper):
    pass


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """A PostgreSQL replica of ``primary_alias`` (from ``CROSSDB["REPLICAS"]``)."""

    # Status checks turn this off on their own statements: they must see the failure.
    fallback = True

    @property
    def primary_alias(self) -> str:
        primary = replicas.primary_of(self.alias)
        if primary is None:
            raise InterfaceError(
                f"{self.alias} uses {replicas.ENGINE} but is not listed in CROSSDB['REPLICAS']"
            )
        return primary

    def may_fall_back(self) -> bool:
        return self.fallback and not self.in_atomic_block and self.primary_alias is not None

    # _cursor is Django's (BaseDatabaseWrapper), missing from django-stubs.
    def _cursor(self, name: str | None = None) -> Any:
        try:
            return super()._cursor(name)  # type: ignore[misc]
        except (OperationalError, InterfaceError) as exc:
            if not self.may_fall_back():
                raise
            replicas.failed(self.alias, exc)
            self.close()
            return connections[self.primary_alias]._cursor(name)  # type: ignore[attr-defined]

    def make_cursor(self, cursor: Any) -> FallbackCursor:
        return FallbackCursor(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> FallbackDebugCursor:
        return FallbackDebugCursor(cursor, self)
