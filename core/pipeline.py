"""The loader: source -> validation -> one writer process per database -> report.

``load(source)`` runs in the calling process and does the validation itself, one batch at a
time, in input order, so the outcome never depends on timing. Each table's valid batches go
to its own writer process (its own connection, its own CPU core), which commits them in
order, one transaction per batch (``core.writers``). The writers run at the same time.

Commit order is what keeps the databases consistent without cross-database transactions:
each parent writer publishes how many batches it has committed, and an order batch is
committed only when every user and product batch dispatched before it has been. Because
orders are validated after all users and products, no order can reach orders.db before the
rows it names, even if the process is killed. Queues are bounded, so a fast source waits for
a slow writer instead of filling memory.
"""

import contextlib
import gc
import logging
import multiprocessing
import queue
import time

from django.db import DatabaseError, connections

from core import tables
from core.databases import location
from core.report import LoadResult, Rejection
from core.tables import PARENT_TABLES, TABLES, fields
from core.validation import (
    CLEANERS,
    ID_MAX,
    QUANTITY_MAX,
    email_key,
    parent_problems,
    shown,
)
from core.writers import existing_ids, writer_for

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50_000  # measured: 10k batches spend 40% more time committing
QUEUE_BATCHES = 2  # batches waiting per writer; bounds memory whatever the input size
POLL_SECONDS = 0.2
GC_THRESHOLD = (100_000, 20, 100)  # allocations between young collections, and the ratios


class LoadError(Exception):
    """A failure that stops the run (a database error, a writer that died)."""


class NullProgress:
    """Progress sink that shows nothing; the command passes a real one on a terminal."""

    def start(self, table):
        pass

    def advance(self, table, read=0, written=0):
        pass


def chunks(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class RunValidator:
    """Validates batches in input order and remembers what it accepted for later references.

    Memory grows with the number of users and products (their ids and emails), never with
    the number of orders.
    """

    def __init__(self):
        self.accepted = {t: set() for t in PARENT_TABLES}
        self.rejected = {t: set() for t in PARENT_TABLES}
        self.email_owner = {}

    def validate(self, table, batch):
        """Return (rows, lines, rejections) for one batch of (line, raw values)."""
        if table == "orders":
            return self._validate_orders(batch)
        return self._validate_rows(table, batch)

    def _validate_orders(self, batch):
        """Take the common case, a CSV order naming parents accepted in this run, in one step.

        A million orders make validation the loader's hot loop; ``int()`` on the four
        strings plus two set lookups is the whole rule for a valid row. Anything else
        (JSON values, bad fields, parents to look up) goes through the general path.
        """
        users, products = self.accepted["users"], self.accepted["products"]
        rows, lines, others = [], [], []
        for item in batch:
            values = item[1]
            if type(values) is list:  # a CSV row: four strings
                try:
                    row = (int(values[0]), int(values[1]), int(values[2]), int(values[3]))
                except ValueError:
                    others.append(item)
                    continue
                if (
                    0 < row[0] <= ID_MAX
                    and 0 < row[3] <= QUANTITY_MAX
                    and row[1] in users
                    and row[2] in products
                ):
                    rows.append(row)
                    lines.append(item[0])
                    continue
            others.append(item)
        if not others:
            return rows, lines, []
        more_rows, more_lines, rejections = self._validate_rows("orders", others)
        merged = sorted(zip(lines + more_lines, rows + more_rows, strict=True))
        return [r for _, r in merged], [line for line, _ in merged], rejections

    def _validate_rows(self, table, batch):
        clean = CLEANERS[table]
        checked = []  # (line, raw values, cleaned, problems)
        rejections = []
        for line, values in batch:
            if isinstance(values, str):  # the source could not split this line into fields
                rejections.append(Rejection(table, line, None, values, {}))
                continue
            cleaned, problems = clean(values)
            if table == "users" and not problems:
                problems = self._email_problems(cleaned)
            checked.append((line, values, cleaned, problems))
        if table == "orders":
            self._check_references(checked)
        rows, lines = [], []
        names = fields(table)
        for line, values, cleaned, problems in checked:
            if problems:
                reason = "; ".join(message for _field, message in problems)
                values = dict(zip(names, values, strict=True))
                rejections.append(Rejection(table, line, cleaned[0], reason, values))
                if table in self.rejected and cleaned[0] is not None:
                    self.rejected[table].add(cleaned[0])
            else:
                if table in self.accepted:
                    self.accepted[table].add(cleaned[0])
                rows.append(cleaned)
                lines.append(line)
        rejections.sort(key=lambda r: r.line or 0)
        return rows, lines, rejections

    def _email_problems(self, user):
        key = email_key(user[2])
        owner = self.email_owner.setdefault(key, user[0])
        if owner != user[0]:
            return [(None, f"email {shown(user[2])} is already used by user {owner}")]
        return []

    def _check_references(self, checked):
        """Add a problem to each order whose user or product was rejected or does not exist.

        Ids accepted in this run are checked in memory; the others with one query per
        database per batch. Orders with other problems are checked too, so every reason
        is reported at once.
        """
        users, products = self.accepted["users"], self.accepted["products"]
        refs = [(c[1], c[2]) for _line, _values, c, _problems in checked]
        unknown_users = {u for u, _ in refs if u is not None and u not in users}
        unknown_products = {p for _, p in refs if p is not None and p not in products}
        unknown_users -= self.rejected["users"]
        unknown_products -= self.rejected["products"]
        stored_users = existing_ids("users", unknown_users) if unknown_users else set()
        stored_products = existing_ids("products", unknown_products) if unknown_products else set()
        if not unknown_users and not unknown_products and not any(self.rejected.values()):
            return
        for index, (line, values, (_id, user, product, _qty), problems) in enumerate(checked):
            if user is None or product is None:
                continue
            missing = parent_problems(
                user,
                product,
                user_exists=user in users or user in stored_users,
                product_exists=product in products or product in stored_products,
                user_rejected=user in self.rejected["users"],
                product_rejected=product in self.rejected["products"],
            )
            if missing:
                checked[index] = (line, values, checked[index][2], [*problems, *missing])


def _writer_main(table, inbox, outbox, committed, dirty, abort):
    """Body of one writer process: commit batches in order, report each, then exit."""
    needs = {}  # parent table -> batches that must be committed before ours
    hooks = {}
    if table == "orders":
        hooks = {
            "wait_for_parents": lambda: _wait_for_parents(committed, abort, needs),
            "must_verify": lambda: any(dirty[t].value for t in PARENT_TABLES),
        }
    try:
        writer = writer_for(table, tables.alias(table), **hooks)
        while (job := inbox.get()) is not None:
            seq, lines, rows, parent_batches = job
            needs.update(parent_batches)
            started = time.time()
            stored, present, rejections = writer.write(rows, lines)
            if rejections and table in dirty:
                dirty[table].value = 1  # before the watermark moves: orders must re-check
            committed[table].value = seq
            outbox.put(("batch", table, stored, present, rejections, started, time.time()))
    except _Aborted:
        outbox.put(("aborted", table, None))
    except (DatabaseError, OSError, RuntimeError) as exc:
        abort.set()
        where = f"{tables.alias(table)} at {location(tables.alias(table))}"
        outbox.put(("failed", table, f"{table} writer ({where}): {exc}"))
    finally:
        connections.close_all()
    outbox.put(("done", table, None))


class _Aborted(Exception):
    pass


def _wait_for_parents(committed, abort, needs):
    for table, count in needs.items():
        while committed[table].value < count:
            if abort.is_set():
                raise _Aborted
            time.sleep(0.002)


class WriterPool:
    """One writer process per table, fed through bounded queues."""

    def __init__(self, table_names):
        # fork keeps the test databases and settings of the caller; connections are closed
        # first so no process inherits an open one.
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.tables = list(table_names)
        self.committed = {t: self.context.Value("q", 0, lock=False) for t in TABLES}
        self.dirty = {t: self.context.Value("b", 0, lock=False) for t in PARENT_TABLES}
        self.abort = self.context.Event()
        self.outbox = self.context.Queue()
        self.inboxes = {t: self.context.Queue(QUEUE_BATCHES) for t in self.tables}
        self.sent = dict.fromkeys(TABLES, 0)
        self.done = set()
        self.processes = {}

    def start(self):
        connections.close_all()
        for table in self.tables:
            process = self.context.Process(
                target=_writer_main,
                name=f"multids-{table}-writer",
                args=(
                    table,
                    self.inboxes[table],
                    self.outbox,
                    self.committed,
                    self.dirty,
                    self.abort,
                ),
                daemon=True,
            )
            process.start()
            self.processes[table] = process

    def send(self, table, lines, rows, result, progress):
        self.sent[table] += 1
        parents = {t: self.sent[t] for t in PARENT_TABLES} if table == "orders" else {}
        job = (self.sent[table], lines, rows, parents)
        while True:
            try:
                self.inboxes[table].put(job, timeout=POLL_SECONDS)
                break
            except queue.Full:
                self.collect(result, progress)
                self._check_alive(result, progress)
        self.collect(result, progress)

    def collect(self, result, progress, timeout=None):
        """Apply every writer report that has arrived; wait up to timeout for the first."""
        while True:
            try:
                message = self.outbox.get(timeout=timeout) if timeout else self.outbox.get_nowait()
            except queue.Empty:
                return
            timeout = None
            kind, table, *rest = message
            if kind == "batch":
                _apply_batch(result, table, *rest)
                progress.advance(table, written=rest[0] + rest[1] + len(rest[2]))
            elif kind == "failed":
                result.error = result.error or rest[0]
            elif kind == "done":
                self.done.add(table)

    def _check_alive(self, result, progress):
        """Raise LoadError if a writer failed or died without saying it was done.

        A writer's last messages reach the queue's pipe before its process exits, but may
        still be unread here: drain them before taking an exited writer for a crashed one.
        """
        if not result.error and any(
            t not in self.done and not p.is_alive() for t, p in self.processes.items()
        ):
            self.collect(result, progress)
        if result.error:
            raise LoadError(result.error)
        for table, process in self.processes.items():
            if table not in self.done and not process.is_alive():
                raise LoadError(
                    f"the {table} writer stopped unexpectedly (exit {process.exitcode})"
                )

    def finish(self, result, progress):
        for table in self.tables:
            while True:
                try:
                    self.inboxes[table].put(None, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    self.collect(result, progress)
                    self._check_alive(result, progress)
        while self.done != set(self.tables):
            self.collect(result, progress, timeout=POLL_SECONDS)
            self._check_alive(result, progress)

    def close(self):
        """Stop every writer (load() calls this once, in finally): after finish() they have
        exited; after a failure they are aborted."""
        self.abort.set()
        for process in self.processes.values():
            process.join(timeout=1)
            if process.is_alive():
                process.terminate()
                process.join()
        for q in (*self.inboxes.values(), self.outbox):
            q.cancel_join_thread()
            q.close()


def _apply_batch(result, table, stored, present, rejections, started, finished):
    totals = result.tables[table]
    totals.stored += stored
    totals.present += present
    totals.started = started if totals.started is None else min(totals.started, started)
    totals.finished = finished if totals.finished is None else max(totals.finished, finished)
    names = fields(table)
    for line, row_id, reason, row in rejections:
        result.reject(Rejection(table, line, row_id, reason, dict(zip(names, row, strict=True))))


def _batches_in_commit_order(source, present, batch_size, progress):
    """Yield (table, batch): user and product batches alternately, so both parent writers
    work at once, then the orders, which may only be validated once every parent is known."""
    for table in present:
        progress.start(table)
    parents = [chunks(source.rows(t), batch_size) for t in PARENT_TABLES if t in present]
    names = [t for t in PARENT_TABLES if t in present]
    while parents:
        for table, batches in list(zip(names, parents, strict=True)):
            batch = next(batches, None)
            if batch is None:
                parents.remove(batches)
                names.remove(table)
            else:
                yield table, batch
    if "orders" in present:
        for batch in chunks(source.rows("orders"), batch_size):
            yield "orders", batch


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


def _load(source, batch_size, progress):
    result = LoadResult(source.label, started=time.time())
    present = [t for t in TABLES if t in source.tables()]
    validator = RunValidator()
    pool = WriterPool(present)
    pool.start()
    try:
        for table, batch in _batches_in_commit_order(source, present, batch_size, progress):
            rows, lines, rejections = validator.validate(table, batch)
            result.tables[table].read += len(batch)
            for rejection in rejections:
                result.reject(rejection)
            progress.advance(table, read=len(batch), written=len(rejections))
            if rows:
                pool.send(table, lines, rows, result, progress)
        pool.finish(result, progress)
    except DatabaseError as exc:
        raise LoadError(f"database error while validating: {exc}") from exc
    finally:
        pool.close()
        connections.close_all()
    if result.error:
        raise LoadError(result.error)
    result.finished = time.time()
    return result
