"""The loader: source -> validation -> one writer process per database -> report.

``load(source)`` runs in the calling process and does the validation itself, one batch at a
time, in input order, so the outcome never depends on timing. Each table's valid batches go
to its own writer process (``crossdb.loading.processes``: its own connection, its own CPU core),
which commits them in order, one transaction per batch (``crossdb.loading.writers``; a child writer
waiting for its parents writes the batches queued meanwhile into the same transaction). The writers
run at the same time.

Commit order is what keeps the databases consistent without cross-database transactions:
tables are read in the registry's order (``crossdb.registry.tables()``: parents first),
and a child batch commits only when every parent batch dispatched before it has committed.
Because a child table is validated only after all its parents, no child can reach its
database before the rows it names, even if the process is killed. Queues are bounded, so a
fast source waits for a slow writer instead of filling memory.

A table of whole numbers (orders) may arrive as ``crossdb.loading.columns.Block`` batches, checked
an array at a time; a Block the array checks cannot settle goes through the row path instead,
so the verdicts are the same either way (``tests/test_verdicts.py``).

The rules for a run, one sentence each:

* A row is valid when every field passes its rule (``crossdb.rules``).
* An id that appears twice: the first valid row with that id wins; a later row with the
  same id is already present (same data) or a conflict (different data), decided by the
  writer, and never makes the id "rejected".
* A comparison key (an email) belongs to the row stored first: a row already stored, else
  the first row of the run that is stored (the writer decides, in input order, so a row
  rejected as a conflict never takes a key from a later one).
* A reference is satisfied by a parent accepted earlier in the run or committed in its
  database when the child's batch commits (looked up inside the guard, ``crossdb.guard``).
"""

import contextlib
import dataclasses
import functools
import gc
import logging
import time
from dataclasses import dataclass, field
from itertools import chain, groupby, islice
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
from django.db import DatabaseError, connections

from crossdb import guard, registry, rules
from crossdb.databases import location
from crossdb.loading import columns
from crossdb.loading.processes import LoadError, WriterPool, first_line
from crossdb.loading.rows import Lines
from crossdb.loading.writers import BulkWriter
from crossdb.lookups import existing_ids
from crossdb.results import LoadResult, Rejection, TableResult
from crossdb.rules import parent_problem

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "LoadError", "NullProgress", "RunValidator", "load"]

DEFAULT_BATCH_SIZE = 50_000  # measured: 10k batches spend 40% more time committing
GC_THRESHOLD = (100_000, 20, 100)  # allocations between young collections, and the ratios


class NullProgress:
    """Progress sink that shows nothing; the command passes a real one on a terminal."""

    def start(self, table, expected=None):
        pass

    def advance(self, table, read=0, written=0):
        pass


def chunks(iterable, size):
    """Lists of up to size items; ``islice`` fills each in C, with no Python step per row."""
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def table_batches(source, table, size):
    """table's rows in batches of up to size: lists of (line, values), and a
    ``columns.Block`` for rows the source gives as blocks (``runs``), in input order."""
    runs = getattr(source, "runs", None)
    if runs is None:
        yield from chunks(source.rows(table), size)
        return
    for is_block, group in groupby(runs(table), key=lambda run: isinstance(run, columns.Block)):
        if is_block:
            yield from columns.batches(group, size)
        else:
            yield from chunks(chain.from_iterable(group), size)


@dataclass(frozen=True)
class Recheck:
    """Rows of a batch whose parents the writer must look up inside the guard."""

    rows: frozenset = frozenset()  # row indexes whose parent was not known at validation
    rejected: dict = field(default_factory=dict)  # parent table -> ids rejected in this run
    # reference field -> the indexes, among rows, whose parent for it was not known: the
    # writer looks parents up before it waits for the run's own to commit, so only these
    # may be found missing then (a row naming a stored user may name a product of the run)
    unknown: dict = field(default_factory=dict)

    def __bool__(self):
        return bool(self.rows)


class Validated(NamedTuple):
    rows: list
    lines: list
    rejections: list
    recheck: Recheck


class RunValidator:
    """Validates batches in input order and remembers what it accepted for later references.

    Memory grows with the number of parent rows (their ids), never with the number of
    children. Comparison keys are the writer's to settle, against what is stored.
    """

    def __init__(self):
        self.accepted: dict[str, set[Any]] = {t: set() for t in registry.parent_tables()}
        self.rejected: dict[str, set[Any]] = {t: set() for t in registry.parent_tables()}
        self._id_sets: dict[
            str, Any
        ] = {}  # parent table -> its accepted ids as a columns.IdSet, for Blocks

    def validate(self, table, batch):
        """Return a Validated for one batch of (line, raw values).

        Column by column: each field's rule converts its whole column in C-level passes
        when every value takes the common case, and value by value otherwise; a row any
        rule refused is then cleaned on its own (``TableSpec.clean``) to name every
        problem. The outcome is the same either way, row by row; only the cost differs.
        """
        spec = registry.specs()[table]
        if isinstance(batch, columns.Block):
            validated = self._validate_block(spec, batch)
            if validated is not None:
                return validated
            batch = batch.rows()  # a value out of range: the rules below name it
        width = len(spec.fields)
        lines = list(map(itemgetter(0), batch))
        values = list(map(itemgetter(1), batch))
        rejections = []
        if set(map(type, values)) != {tuple} or set(map(len, values)) != {width}:
            lines, values, rejections = self._split_malformed(spec, batch)
        converted, bad = self._convert_columns(spec, values)
        rows = list(zip(*converted, strict=True)) if values else []
        problems_of = {}
        for i in sorted(bad):
            row, problems = spec.clean(values[i])
            if problems:
                problems_of[i] = list(problems)
            else:  # a value the column pass set aside that its rule accepts on its own
                rows[i] = row
        good = [i for i in range(len(rows)) if i not in problems_of] if problems_of else None
        if good is not None:
            bad_rows = [(lines[i], values[i], rows[i], problems_of[i]) for i in problems_of]
            rows = [rows[i] for i in good]
            lines = [lines[i] for i in good]
            rejections.extend(self._reject(spec, bad_rows))
        accepted = self.accepted.get(table)
        if accepted is not None and rows:
            ids = [r[0] for r in rows] if bad else converted[0]
            accepted.update(ids)
            self.rejected[table].difference_update(ids)
        rejections.sort(key=lambda r: r.line or 0)
        recheck = self._recheck(spec, rows, None if bad else converted)
        return Validated(rows, lines, rejections, recheck)

    def _validate_block(self, spec, block):
        """The Validated for a Block whose every value is in range, or None.

        The same outcome as the row path: a Block holds only whole numbers, so a row is
        valid when each lies in its rule's bounds; references and accepted ids are then
        settled as in ``validate``, an array at a time.
        """
        values = block.values
        for convert, column in zip(spec.converters, values.T, strict=True):
            if not columns.within(column, *convert.bounds):
                return None
        accepted = self.accepted.get(spec.name)
        if accepted is not None:
            ids = values[:, 0].tolist()
            accepted.update(ids)
            self.rejected[spec.name].difference_update(ids)
        unknown = np.zeros(len(values), dtype=bool)
        unknown_by_field = {}
        for reference in spec.references:
            named = values[:, spec.position(reference.field)]
            missing = ~self._accepted_ids(reference.parent).contains(named)
            if missing.any():
                unknown_by_field[reference.field] = frozenset(np.flatnonzero(missing).tolist())
                unknown |= missing
        recheck = Recheck()
        if unknown.any():
            at = np.flatnonzero(unknown)
            rejected = {}  # for the wording: the unknown parents this run rejected
            for reference in spec.references:
                if self.rejected[reference.parent]:
                    named = values[at, spec.position(reference.field)].tolist()
                    if ids := self.rejected[reference.parent].intersection(named):
                        rejected[reference.parent] = frozenset(ids)
            recheck = Recheck(frozenset(at.tolist()), rejected, unknown_by_field)
        return Validated(values, block.lines, [], recheck)

    def _accepted_ids(self, table):
        """The ids of table accepted so far, as a ``columns.IdSet`` (rebuilt when they grow:
        they only grow, so their count tells)."""
        accepted = self.accepted[table]
        cached = self._id_sets.get(table)
        if cached is None or len(cached) != len(accepted):
            cached = self._id_sets[table] = columns.IdSet(accepted)
        return cached

    def _split_malformed(self, spec, batch):
        """Set aside what the source could not split into fields
        (``crossdb.loading.rows.Malformed``)."""
        width = len(spec.fields)
        lines, values, rejections = [], [], []
        for line, row_values in batch:
            if type(row_values) in (tuple, list) and len(row_values) == width:
                lines.append(line)
                values.append(tuple(row_values))
            else:
                reason = getattr(row_values, "reason", None) or (
                    row_values if isinstance(row_values, str) else f"expected {width} fields"
                )
                raw = getattr(row_values, "raw", None)
                rejections.append(Rejection(spec.name, line, None, reason, {}, raw))
        return lines, values, rejections

    def _convert_columns(self, spec, values):
        """Convert every column; return (columns, indexes of rows some rule refused)."""
        if not values:
            return [[] for _ in spec.columns], set()
        columns, bad = [], set()
        # itemgetter per field, not zip(*values): zip over 50,000 tuples is ten times slower
        transposed = [list(map(itemgetter(i), values)) for i in range(len(spec.fields))]
        for convert, column in zip(spec.converters, transposed, strict=True):
            fast = getattr(convert, "column", None)
            converted = fast(column) if fast else None
            if converted is None:
                converted = []
                for index, value in enumerate(column):
                    try:
                        converted.append(convert(value))
                    except rules.Invalid:
                        converted.append(None)
                        bad.add(index)
            columns.append(converted)
        for key in spec.keys:
            source = columns[spec.fields.index(key.source)]
            keys = [None if v is None else key.normalize(v) for v in source]
            if keys and max(map(len, filter(None, keys)), default=0) > key.max_length:
                bad.update(i for i, k in enumerate(keys) if key.problem(k))
            columns.append(keys)
        return columns, bad

    def _recheck(self, spec, rows, columns=None):
        """Rows whose parent this run did not accept: the writer looks them up in the guard.

        columns, when given, are rows by column (the validator's own, when every value took
        the column pass): one ``issuperset`` per reference settles the common case in C.
        """
        unresolved: set[int] = set()
        unknown: dict[str, frozenset[int]] = {}
        for reference in spec.references:
            position = spec.position(reference.field)
            parents = self.accepted[reference.parent]
            if columns is not None:
                named = columns[position]
            else:
                named = list(map(itemgetter(position), rows))
            if not parents.issuperset(named):
                at = frozenset(i for i, pk in enumerate(named) if pk not in parents)
                unknown[reference.field] = at
                unresolved |= at
        if not unresolved:
            return Recheck()
        rejected = self._rejected_parents(spec, rows, unresolved)
        return Recheck(frozenset(unresolved), rejected, unknown)

    def _reject(self, spec, bad):
        """Turn rows with problems into Rejections, naming missing parents too.

        Rows with other problems get their references checked as well (one query per parent
        table for the whole batch), so every reason is reported at once.
        """
        accepted = self.accepted.get(spec.name)
        rejected = self.rejected.get(spec.name)
        missing: list[list[tuple[str, Any]]] = [
            [] for _ in bad
        ]  # per row: (field, id) of the parents said not to exist
        for reference in spec.references:
            position = spec.position(reference.field)
            parents = self.accepted[reference.parent]
            wanted = {r[position] for _l, _v, r, _p in bad if r[position] is not None}
            unknown = wanted - parents
            stored = existing_ids(reference.parent, unknown) if unknown else set()
            for index, (_line, _values, row, problems) in enumerate(bad):
                pk = row[position]
                if pk is None or pk in parents or pk in stored:
                    continue
                rejected_in_run = pk in self.rejected[reference.parent]
                problems.append(
                    parent_problem(
                        reference.field, reference.noun, pk, rejected_in_run=rejected_in_run
                    )
                )
                if not rejected_in_run:
                    missing[index].append((reference.field, pk))
        out = []
        for (line, values, row, problems), absent in zip(bad, missing, strict=True):
            reason = "; ".join(message for _field, message in problems)
            if isinstance(line, Lines) and line.last > line and "contains a line break" in reason:
                reason += " (an unbalanced quote?)"  # a record that ran over several lines
            raw_values = dict(zip(spec.fields, values, strict=False))
            out.append(Rejection(spec.name, line, row[0], reason, raw_values, missing=absent))
            if rejected is not None and row[0] is not None and row[0] not in (accepted or ()):
                rejected.add(row[0])
        return out

    def _rejected_parents(self, spec, rows, indexes):
        """The parent ids, among rows to re-check, that this run rejected (for the wording)."""
        out = {}
        for reference in spec.references:
            position = spec.position(reference.field)
            ids = {rows[i][position] for i in indexes} & self.rejected[reference.parent]
            if ids:
                out[reference.parent] = frozenset(ids)
        return out


def name_parents_rejected_in_run(result):
    """Say "user 2 was rejected in this run", not "does not exist", for every parent the
    run rejected, wherever it was rejected.

    The validator knows the parents it rejected and says so at once; a parent its writer
    rejects (an email another user has) is known only from the writer's report,
    which may come in after the child's writer has judged the child. Once every report is
    in, each "does not exist" (``Rejection.missing``) naming an id a row of its parent
    table was rejected with is reworded, so the wording never depends on which writer
    reported first.
    """
    pending = [i for i, r in enumerate(result.rejections) if r.missing]
    if not pending:
        return
    rejected: dict[str, set[Any]] = {}
    for r in result.rejections:
        if r.id is not None and r.table in registry.parent_tables():
            rejected.setdefault(r.table, set()).add(r.id)
    for index in pending:
        rejection = result.rejections[index]
        spec = registry.specs()[rejection.table]
        parts = rejection.reason.split("; ")
        for field_name, pk in rejection.missing:
            reference = next(r for r in spec.references if r.field == field_name)
            if pk in rejected.get(reference.parent, ()):
                said = parent_problem(field_name, reference.noun, pk).message
                meant = parent_problem(field_name, reference.noun, pk, rejected_in_run=True)
                parts = [meant.message if part == said else part for part in parts]
        result.rejections[index] = dataclasses.replace(rejection, reason="; ".join(parts))


def writer_for(table, alias, gate=None, snapshot=None):
    """Pick the fastest writer the database behind alias supports (COPY on PostgreSQL)."""
    if connections[alias].vendor == "postgresql":
        from crossdb.loading.postgres import (
            PostgresBulkWriter,  # here: psycopg costs 0.15 s to import
        )

        return PostgresBulkWriter(table, alias, gate, snapshot)
    return BulkWriter(table, alias, gate, snapshot)


def _make_writer(table, gate, snapshot=None):
    """Build table's writer in its process, with the guard counters of the run's start."""
    return writer_for(table, registry.specs()[table].alias, gate, (snapshot or {}).get(table))


def _describe(table):
    alias = registry.specs()[table].alias
    return f"{alias} at {location(alias)}"


def _apply_batch(result, report):
    table, (stored, present, rejections) = report.table, report.written
    totals = result.tables[table]
    totals.stored += stored
    totals.present += present
    started, finished = report.started, report.finished
    totals.started = started if totals.started is None else min(totals.started, started)
    totals.finished = finished if totals.finished is None else max(totals.finished, finished)
    for rejection in rejections:
        result.reject(rejection)


def _levels(present):
    """Group the present tables by depth in the reference graph: parents, then children."""
    depth: dict[str, int] = {}
    for name in registry.tables():
        depth[name] = 1 + max((depth[p] for p in registry.specs()[name].parents), default=-1)
    levels: dict[int, list[str]] = {}
    for name in present:
        levels.setdefault(depth[name], []).append(name)
    return [levels[d] for d in sorted(levels)]


def _batches_in_commit_order(source, present, batch_size, progress):
    """Yield (table, batch): the tables of one level alternately, so their writers work at
    once, then the next level, which may only be validated once every parent is known."""
    for table in present:
        progress.start(table, _expected(source, table))
    for level in _levels(present):
        streams = {t: table_batches(source, t, batch_size) for t in level}
        while streams:
            for table, batches in list(streams.items()):
                batch = next(batches, None)
                if batch is None:
                    del streams[table]
                else:
                    yield table, batch


def _expected(source, table):
    expected = getattr(source, "expected", None)
    return expected(table) if expected else None


@contextlib.contextmanager
def rare_collections():
    """Let the cyclic garbage collector run rarely while a load runs (writers inherit it).

    A load allocates millions of lists and tuples that hold no reference cycles; at
    Python's default threshold (700) the collector keeps walking every batch still alive.
    Measured on the 1.11M-row PostgreSQL bench: 5.9 s of client CPU, 3.6 s with this.
    Objects made before the load (Django's) are frozen, so the collections that run skip
    them; cycles made during the load are still collected.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def load(source, *, batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Validate and store every row of source; return a LoadResult.

    Raises LoadError when a database fails mid-run; batches committed before the failure
    stay, and running the same load again completes it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with rare_collections():
        return _load(source, batch_size, progress or NullProgress())


def _guard_snapshot(present):
    """The deletion counters of every child table's database, before anything is read."""
    return {
        t: guard.counters(registry.specs()[t].alias, registry.specs()[t].parents)
        for t in present
        if registry.specs()[t].references
    }


def _load(source, batch_size, progress):
    present = [t for t in registry.tables() if t in source.tables()]
    result = LoadResult(
        source.label, started=time.time(), tables={t: TableResult(t) for t in present}
    )
    try:
        snapshot = _guard_snapshot(present)
    except DatabaseError as exc:
        raise LoadError(f"cannot read the reference guard: {first_line(exc)}") from exc
    validator = RunValidator()
    pool = WriterPool(present, functools.partial(_make_writer, snapshot=snapshot), _describe)

    reported = dict.fromkeys(present, 0)  # rows of the batches whose report was read

    def on_report(report):
        _apply_batch(result, report)
        written = report.written
        rows = written.stored + written.present + len(written.rejections)
        reported[report.table] += rows
        progress.advance(report.table, written=rows)

    pool.start()
    try:
        for table, batch in _batches_in_commit_order(source, present, batch_size, progress):
            validated = validator.validate(table, batch)
            result.tables[table].read += len(batch)
            for rejection in validated.rejections:
                result.reject(rejection)
            progress.advance(table, read=len(batch), written=len(validated.rejections))
            if len(validated.rows):
                after = {p: pool.sent[p] for p in registry.specs()[table].parents if p in pool.sent}
                pool.send(
                    table,
                    validated.lines,
                    validated.rows,
                    after,
                    on_report,
                    recheck=validated.recheck,
                )
        pool.finish(on_report)
        name_parents_rejected_in_run(result)
    except DatabaseError as exc:
        raise LoadError(f"database error while validating: {first_line(exc)}") from exc
    finally:
        pool.close()
        connections.close_all()
        _count_unreported(pool, reported, progress)
    result.finished = time.time()
    return result


def _count_unreported(pool, reported, progress):
    """Tell progress about batches committed but not reported yet: a run stopped (Ctrl-C)
    or failed leaves their reports unread, and what it says was kept must count them
    ("users 50,000" was said when 100,000 were committed)."""
    for table, rows in reported.items():
        if unreported := pool.committed_rows(table) - rows:
            progress.advance(table, written=unreported)
