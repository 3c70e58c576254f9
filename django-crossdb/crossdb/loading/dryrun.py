"""A dry run: every verdict of a load, with nothing written anywhere.

``load(source, dry_run=True)`` validates exactly as a real run does (``RunValidator``, in
the main process, batch by batch) and hands each validated batch to a ``DryRun`` instead of
the writer processes. A ``DryRun`` settles each batch as the writer's careful path would
(``BulkWriter._classify_and_insert``), reading the databases and never writing them:

* an id stored, or taken by an earlier row of the run that would be stored, makes the row
  already present (same data) or a conflict (different data), which ``on_conflict``
  rejects, skips or turns into an update (whose old email key is then free for the rows
  after it);
* a comparison key (an email) stored, or claimed by an earlier row that would be stored,
  makes the row a rejection naming the owner;
* a reference is satisfied by a parent id the run would store or found stored (the parent
  tables are settled first, as their batches commit first), else looked up in its database.

Why not run the real writers and roll back: a rolled-back insert still moves PostgreSQL's
statistics counters (``n_tup_ins``), takes locks that make other loads wait, and on SQLite
may write pages to the WAL; reading settles the same questions and leaves every database
as it was, byte for byte. Why in one process: nothing is committed, so there is nothing for
writers to overlap, and settling parent tables before their children is what the commit
order gives a real run.

What it holds grows with the rows the run would store (their values, to tell a row given
twice from a conflict): a preview of a very large load needs memory in proportion.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections

from crossdb import registry
from crossdb.loading import columns
from crossdb.loading.processes import Report, Written
from crossdb.loading.validate import Recheck
from crossdb.loading.writers import REJECT, SKIP, UPDATE
from crossdb.lookups import existing_ids, query_chunks, stored_rows
from crossdb.registry import TableSpec
from crossdb.results import Rejection
from crossdb.rules import parent_problem, shown

log = logging.getLogger(__name__)

__all__ = ["DryRun"]


class _DryTable:
    """One table's share of a dry run: what the run would have stored in it so far."""

    def __init__(self, spec: TableSpec, on_conflict: str = REJECT) -> None:
        self.spec = spec
        self.alias = spec.alias
        self.on_conflict = on_conflict
        # id -> the row the run would leave under it: stored by it, or written over
        self.taken: dict[Any, tuple[Any, ...]] = {}
        # key column -> {key value: id of the row that would own it; None: an update gave
        # it up, so the stored owner no longer counts}
        self.claimed: dict[str, dict[Any, Any]] = {key.column: {} for key in spec.keys}
        # ids that will exist once the run is over: would be stored, or found stored
        self.exists: set[Any] = set()

    def settle(
        self, lines: list[Any], rows: list[tuple[Any, ...]], known: dict[str, set[Any]]
    ) -> Written:
        """What the writer's careful path would make of rows, in input order, against what
        is stored and what the run did before them (``BulkWriter._classify_and_insert``)."""
        connection = connections[self.alias]
        spec = self.spec
        stored = stored_rows(spec, connection, self.alias, [r[0] for r in rows])
        owners = self._stored_key_owners(rows)
        would_store = present = updated = skipped = 0
        rejections = []
        for line, row in zip(lines, rows, strict=True):
            earlier = self.taken.get(row[0]) or stored.get(row[0])
            if earlier is not None:
                self.exists.add(row[0])
                if spec.comparable(earlier) == spec.comparable(row):
                    present += 1
                    continue
                if self.on_conflict == SKIP:
                    skipped += 1
                    continue
                if self.on_conflict != UPDATE:
                    rejections.append(self._conflict(line, row, earlier))
                    continue
            clash = self._key_owner(row, owners)
            if clash is not None:
                key, owner = clash
                value = row[spec.position(key.source)]
                reason = f"{key.source} {shown(value)} is already used by {spec.noun} {owner}"
                rejections.append(self._rejection(line, row, reason))
                continue
            self.taken[row[0]] = row
            self.exists.add(row[0])
            for key in spec.keys:
                position = spec.position(key.column)
                if earlier is not None and earlier[position] != row[position]:
                    self.claimed[key.column][earlier[position]] = None  # given up
                self.claimed[key.column][row[position]] = row[0]
            if earlier is None:
                would_store += 1
            else:
                updated += 1
        known[spec.name] = self.exists
        return Written(would_store, present, rejections, updated, skipped)

    def _stored_key_owners(self, rows: list[tuple[Any, ...]]) -> dict[str, dict[Any, Any]]:
        """{key column: {key value: id of the stored row that has it}} for the rows' keys."""
        manager = self.spec.model.objects.using(self.alias)
        owners: dict[str, dict[Any, Any]] = {}
        for key in self.spec.keys:
            position = self.spec.position(key.column)
            found: dict[Any, Any] = {}
            values = {r[position] for r in rows}
            for chunk in query_chunks(connections[self.alias], values):
                found.update(
                    manager.filter(**{f"{key.column}__in": chunk}).values_list(key.column, "pk")
                )
            owners[key.column] = found
        return owners

    def _key_owner(
        self, row: tuple[Any, ...], owners: dict[str, dict[Any, Any]]
    ) -> tuple[Any, Any] | None:
        """(key, owner id) for the first key of row that another row owns, or None."""
        for key in self.spec.keys:
            value = row[self.spec.position(key.column)]
            owner = self.claimed[key.column].get(value, owners[key.column].get(value))
            if owner is not None and owner != row[0]:
                return key, owner
        return None

    def _rejection(self, line: Any, row: tuple[Any, ...], reason: str) -> Rejection:
        values = dict(zip(self.spec.fields, row, strict=False))
        return Rejection(self.spec.name, line, row[0], reason, values)

    def _conflict(self, line: Any, row: tuple[Any, ...], earlier: tuple[Any, ...]) -> Rejection:
        fields = self.spec.fields
        stored = ", ".join(
            f"{name} {shown(value)}"
            for name, value in zip(fields[1:], earlier[1 : len(fields)], strict=True)
        )
        reason = f"{self.spec.pk} {row[0]} is already stored with different data ({stored})"
        return self._rejection(line, row, reason)

    def without_missing_parents(
        self,
        lines: list[Any],
        rows: list[tuple[Any, ...]],
        recheck: Recheck | frozenset[int],
        known: dict[str, set[Any]],
    ) -> tuple[list[Any], list[tuple[Any, ...]], list[Rejection]]:
        """Set aside, with their reasons, the rows naming a parent that will not exist when
        the run is over: neither stored by it nor found in the parent's database."""
        spec = self.spec
        problems: dict[int, list[tuple[str, tuple[str, Any] | None]]] = {}
        rejected_in_run = recheck.rejected if isinstance(recheck, Recheck) else {}
        for reference in spec.references:
            position = spec.position(reference.field)
            named = {row[position] for row in rows if row[position] is not None}
            will_exist = known.get(reference.parent, set())
            unsure = named - will_exist
            absent = unsure - existing_ids(reference.parent, unsure) if unsure else set()
            if not absent:
                continue
            for index, row in enumerate(rows):
                pk = row[position]
                if pk not in absent:
                    continue
                in_run = pk in rejected_in_run.get(reference.parent, ())
                problem = parent_problem(
                    reference.field, reference.noun, pk, rejected_in_run=in_run
                )
                said_absent = None if in_run else (reference.field, pk)
                problems.setdefault(index, []).append((problem.message, said_absent))
        if not problems:
            return lines, rows, []
        kept_lines, kept_rows, rejections = [], [], []
        for index, (line, row) in enumerate(zip(lines, rows, strict=True)):
            if index not in problems:
                kept_lines.append(line)
                kept_rows.append(row)
                continue
            found = problems[index]
            rejection = self._rejection(line, row, "; ".join(message for message, _ in found))
            missing = tuple(absent for _message, absent in found if absent is not None)
            rejections.append(dataclasses.replace(rejection, missing=missing))
        return kept_lines, kept_rows, rejections


class DryRun:
    """Stands where the ``WriterPool`` stands in a real run, and settles each batch at once.

    The loader calls it as it calls the pool (``start``, ``send``, ``end``, ``finish``, ``close``,
    ``sent``, ``committed_rows``), so a dry run is the same loop with another sink.
    """

    def __init__(self, tables: Iterable[str], on_conflict: str = REJECT) -> None:
        self.tables = list(tables)
        self.sent = dict.fromkeys(self.tables, 0)
        self._state = {t: _DryTable(registry.specs()[t], on_conflict) for t in self.tables}
        self._known: dict[str, set[Any]] = {}  # parent table -> ids that will exist
        self._settled = dict.fromkeys(self.tables, 0)

    def start(self) -> None:
        log.info("dry run: nothing will be written")

    def send(
        self,
        table: str,
        lines: Any,
        rows: Any,
        after: dict[str, int],
        on_report: Callable[[Report], None],
        recheck: Recheck | frozenset[int] = frozenset(),
    ) -> None:
        """Settle one validated batch and report it as its writer would."""
        self.sent[table] += 1
        started = time.time()
        tuples = columns.tuples(rows)
        line_list = columns.line_list(lines, len(tuples))
        self._settled[table] += len(tuples)
        state = self._state[table]
        rejections: list[Rejection] = []
        if state.spec.references:
            line_list, tuples, rejections = state.without_missing_parents(
                line_list, tuples, recheck, self._known
            )
        written = state.settle(line_list, tuples, self._known)
        written = written._replace(rejections=rejections + written.rejections)
        on_report(Report("batch", table, written, started, time.time()))

    def end(self, table: str, on_report: Callable[[Report], None]) -> None:
        """Nothing to tell: table's batches were settled when they were sent."""

    def finish(self, on_report: Callable[[Report], None]) -> None:
        """Nothing is pending: every batch was settled when it was sent."""

    def close(self) -> None:
        """Nothing to stop: a dry run starts no process."""

    def committed_rows(self, table: str) -> int:
        """The rows settled so far (nothing is committed in a dry run)."""
        return self._settled[table]
