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

The rules a run validates rows by: ``crossdb.loading.validate``. What becomes of a row whose id
is stored with other data (``on_conflict``: reject it, skip it, or update the stored row) is
the writers' to settle, on their careful path (``crossdb.loading.writers``).
"""

import contextlib
import dataclasses
import functools
import gc
import logging
import time
from itertools import chain, groupby, islice
from typing import Any

import numpy as np
from django.db import DatabaseError, connections

from crossdb import guard, registry
from crossdb.databases import location
from crossdb.loading import columns
from crossdb.loading.dryrun import DryRun
from crossdb.loading.processes import LoadError, WriterPool, first_line
from crossdb.loading.validate import RunValidator
from crossdb.loading.writers import ON_CONFLICT, REJECT, BulkWriter
from crossdb.lookups import all_ids
from crossdb.results import LoadResult, TableResult
from crossdb.rules import parent_problem

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "LoadError", "NullProgress", "load"]

DEFAULT_BATCH_SIZE = 50_000  # measured: 10k batches spend 40% more time committing
TUPLE_BATCH_VALUES = 50_000  # values in a batch of tuples (``tuple_batch_rows``)
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


def tuple_batch_rows(table, size):
    """Rows in a batch of Python tuples: size, or fewer for a wide table.

    A value in a tuple costs about 60 bytes (the object and its slot) in the main process,
    in the writer's queue and in the writer, against 8 in a ``columns.Block``; and up to
    three batches of each table are in flight at once. So a batch of tuples holds at most
    ``TUPLE_BATCH_VALUES`` values whatever its rows: 12,500 users of 4 columns, about 3 MB,
    where 50,000 took 13 MB and a load's memory grew with its users until the queues were
    full. A Block keeps size rows.
    """
    width = len(registry.specs()[table].columns)
    return max(1, min(size, TUPLE_BATCH_VALUES // width))


def table_batches(source, table, size):
    """table's rows in batches: lists of (line, values) of up to ``tuple_batch_rows``
    rows, and a ``columns.Block`` of up to size rows for rows the source gives as blocks
    (``runs``), in input order."""
    rows = tuple_batch_rows(table, size)
    runs = getattr(source, "runs", None)
    if runs is None:
        yield from chunks(source.rows(table), rows)
        return
    for is_block, group in groupby(runs(table), key=lambda run: isinstance(run, columns.Block)):
        if is_block:
            yield from columns.batches(group, size)
        else:
            yield from chunks(chain.from_iterable(group), rows)


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
    if not result.naming_missing:
        return
    parents = registry.parent_tables()
    rejected: dict[str, set[Any]] = {}
    for r in result.rejections:
        if r.id is not None and r.table in parents:
            rejected.setdefault(r.table, set()).add(r.id)
    result.rejections.change_each(functools.partial(_reworded, rejected=rejected))


def _reworded(rejection, rejected):
    """rejection, its "does not exist" said as "was rejected in this run" for each parent
    in rejected ({table: ids}) it names (``name_parents_rejected_in_run``)."""
    if not rejection.missing:
        return rejection
    spec = registry.specs()[rejection.table]
    parts = rejection.reason.split("; ")
    for field_name, pk in rejection.missing:
        reference = next(r for r in spec.references if r.field == field_name)
        if pk in rejected.get(reference.parent, ()):
            said = parent_problem(field_name, reference.noun, pk).message
            meant = parent_problem(field_name, reference.noun, pk, rejected_in_run=True)
            parts = [meant.message if part == said else part for part in parts]
    return dataclasses.replace(rejection, reason="; ".join(parts))


def writer_for(table, alias, gate=None, snapshot=None, on_conflict=REJECT):
    """Pick the fastest writer the database behind alias supports (COPY on PostgreSQL)."""
    if connections[alias].vendor == "postgresql":
        from crossdb.loading.postgres import (
            PostgresBulkWriter,  # here: psycopg costs 0.15 s to import
        )

        writer_class: type[BulkWriter] = PostgresBulkWriter
    else:
        writer_class = BulkWriter
    return writer_class(table, alias, gate, snapshot, on_conflict=on_conflict)


def _make_writer(table, gate, snapshot=None, on_conflict=REJECT):
    """Build table's writer in its process, with the guard counters of the run's start
    and the run's on_conflict (both travel as data in the pool's writer factory)."""
    alias = registry.specs()[table].alias
    snapshot = (snapshot or {}).get(table)
    return writer_for(table, alias, gate, snapshot, on_conflict)


def _describe(table):
    alias = registry.specs()[table].alias
    return f"{alias} at {location(alias)}"


def _apply_batch(result, report):
    table, written = report.table, report.written
    totals = result.tables[table]
    totals.stored += written.stored
    totals.present += written.present
    totals.updated += written.updated
    totals.skipped += written.skipped
    started, finished = report.started, report.finished
    totals.started = started if totals.started is None else min(totals.started, started)
    totals.finished = finished if totals.finished is None else max(totals.finished, finished)
    for rejection in written.rejections:
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


def _batches_in_commit_order(source, present, batch_size, progress, resume=None, ended=None):
    """Yield (table, batch): the tables of one level alternately, so their writers work at
    once, then the next level, which may only be validated once every parent is known.
    resume: a ``crossdb.resume.ResumePoint`` whose settled rows are left out; ended(table)
    is called once table's last batch has been taken."""
    for table in present:
        progress.start(table, _expected(source, table))
        if resume and resume.through(table) and hasattr(source, "start_after"):
            source.start_after(table, resume.through(table))
    for level in _levels(present):
        streams = {
            t: after_line(table_batches(source, t, batch_size), resume.through(t) if resume else 0)
            for t in level
        }
        while streams:
            for table, batches in list(streams.items()):
                batch = next(batches, None)
                if batch is None:
                    del streams[table]
                    if ended is not None:
                        ended(table)
                else:
                    yield table, batch


def last_line(batch):
    """The input line a batch ends on (the last line of a record over several), or None
    for generated rows."""
    if isinstance(batch, columns.Block):
        return None if batch.lines is None or not len(batch) else int(batch.lines[-1])
    line = batch[-1][0] if batch else None
    return getattr(line, "last", line)


def after_line(batches, through):
    """batches without their rows up to input line through (a resumed run's settled
    prefix); rows come in input order, so only the first batches lose any."""
    for batch in batches:
        if through:
            if isinstance(batch, columns.Block):
                if batch.lines is not None:
                    cut = int(np.searchsorted(batch.lines, through, side="right"))
                    batch = batch.split(cut)[1] if cut else batch
            else:
                cut = 0
                while cut < len(batch) and _ends_by(batch[cut][0], through):
                    cut += 1
                batch = batch[cut:] if cut else batch
            if not len(batch):
                continue
            through = 0  # past the prefix: the rest goes as it comes
        yield batch


def _ends_by(line, through):
    return line is not None and getattr(line, "last", line) <= through


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


def load(
    source,
    *,
    batch_size=DEFAULT_BATCH_SIZE,
    progress=None,
    on_conflict=REJECT,
    dry_run=False,
    resume=None,
    checkpoints=None,
):
    """Validate and store every row of source; return a LoadResult.

    on_conflict says what becomes of a row whose id is stored with other data: "reject"
    (a conflict, the default), "skip" (the stored row is kept) or "update" (the row's values
    are written over it, every rule and the guard applying as to an insert).

    Raises LoadError when a database fails mid-run; batches committed before the failure
    stay, and running the same load again completes it. dry_run: decide every row as the
    run would, reading the databases and writing nothing (``crossdb.loading.dryrun``); the
    result's ``stored`` counts are then the rows it would store.

    resume, a ``crossdb.resume.ResumePoint``: continue a stopped run, leaving out the rows
    it settled and reporting them as it did; checkpoints, a ``crossdb.resume.Checkpoints``:
    keep this run's settled prefixes in its record, for a run that resumes it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}")
    with rare_collections():
        return _load(
            source,
            batch_size,
            progress or NullProgress(),
            on_conflict,
            dry_run,
            resume,
            checkpoints,
        )


def _guard_snapshot(present):
    """The deletion counters of every child table's database, before anything is read."""
    return {
        t: guard.counters(registry.specs()[t].alias, registry.specs()[t].parents)
        for t in present
        if registry.specs()[t].references
    }


def _resumed(result, validator, resume, present, progress):
    """Take a stopped run's settled prefixes as this run's: their counts and rejections,
    and, for a parent table, the ids stored in it (its children may name any of those the
    prefix held; read after the guard's counters, so a deletion since is seen as one)."""
    for table, point in resume.tables.items():
        if table not in present:
            continue
        totals = result.tables[table]
        for name in ("read", "stored", "present", "updated", "skipped"):
            setattr(totals, name, getattr(totals, name) + getattr(point, name))
        for rejection in point.rejected():
            result.reject(rejection)
        progress.advance(table, read=point.read, written=point.read)
        if table in validator.accepted:
            for ids in all_ids(table):
                validator.accepted[table].add(ids)


def _load(
    source, batch_size, progress, on_conflict=REJECT, dry_run=False, resume=None, checkpoints=None
):
    present = [t for t in registry.tables() if t in source.tables()]
    result = LoadResult(
        source.label,
        started=time.time(),
        tables={t: TableResult(t) for t in present},
        on_conflict=on_conflict,
        dry_run=dry_run,
    )
    try:
        snapshot = _guard_snapshot(present)
    except DatabaseError as exc:
        raise LoadError(f"cannot read the reference guard: {first_line(exc)}") from exc
    validator = RunValidator()
    if resume is not None:
        _resumed(result, validator, resume, present, progress)
    pool: WriterPool | DryRun
    if dry_run:
        pool = DryRun(present, on_conflict)
    else:
        make_writer = functools.partial(_make_writer, snapshot=snapshot, on_conflict=on_conflict)
        pool = WriterPool(present, make_writer, _describe)

    reported = dict.fromkeys(present, 0)  # rows of the batches whose report was read

    def on_report(report):
        _apply_batch(result, report)
        written = report.written
        rows = written.stored + written.present + len(written.rejections)
        rows += written.updated + written.skipped
        reported[report.table] += rows
        progress.advance(report.table, written=rows)
        if checkpoints is not None:
            checkpoints.reported(report.table, written)

    pool.start()
    try:
        # A writer told its table's end at once builds its deferred indexes while the
        # next tables load: the users' at the end, beside the orders', cost an 11.1M-row
        # load on PostgreSQL about a second.
        batches = _batches_in_commit_order(
            source,
            present,
            batch_size,
            progress,
            resume,
            functools.partial(pool.end, on_report=on_report),
        )
        for table, batch in batches:
            validated = validator.validate(table, batch)
            result.tables[table].read += len(batch)
            for rejection in validated.rejections:
                result.reject(rejection)
            progress.advance(table, read=len(batch), written=len(validated.rejections))
            if checkpoints is not None:
                sent = bool(len(validated.rows))
                through = last_line(batch)
                checkpoints.validated(table, through, len(batch), validated.rejections, sent)
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
        if checkpoints is not None and not dry_run:
            _read_reports_left(pool, on_report)
        pool.close()
        connections.close_all()
        _count_unreported(pool, reported, progress)
    result.finished = time.time()
    return result


def _read_reports_left(pool, on_report):
    """Read the reports already sent when a run stops (Ctrl-C, a failure): the batches they
    name are committed, and kept in the run's record a run that resumes this one does not
    settle them again. The pipe of a writer that died may be broken: what it held is lost
    to the record only, and the stop's own error is the one to raise."""
    with contextlib.suppress(OSError, EOFError, ValueError):
        pool.collect(on_report)


def _count_unreported(pool, reported, progress):
    """Tell progress about batches committed but not reported yet: a run stopped (Ctrl-C)
    or failed leaves their reports unread, and what it says was kept must count them
    ("users 50,000" was said when 100,000 were committed)."""
    for table, rows in reported.items():
        if unreported := pool.committed_rows(table) - rows:
            progress.advance(table, written=unreported)
