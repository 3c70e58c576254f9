"""Writer processes: one per table, fed through bounded queues, reporting back one queue.

The pool knows nothing of what a table holds. It starts one process per table, sends each
its jobs in order, and shares two facts per table between the processes: how many batches
the table's writer has committed (``committed``) and whether it has rejected rows at write
time (``flagged``). A job names the batches of other tables that must be committed before
it may commit (``Job.after``); ``Gate.wait_for_parents`` blocks on exactly that.

``make_writer(table, gate)`` builds the object that writes in the child; its
``write(job)`` commits one batch and returns a ``Written``; its optional ``finish()`` runs
after the last job, before the writer reports that it is done.
"""

import logging
import multiprocessing
import queue
import time
from typing import NamedTuple

from django.db import DatabaseError, connections

log = logging.getLogger(__name__)

QUEUE_BATCHES = 2  # batches waiting per writer; bounds memory whatever the input size
POLL_SECONDS = 0.2


class LoadError(Exception):
    """A failure that stops the run (a database error, a writer that died)."""


class Job(NamedTuple):
    """One batch for one writer."""

    seq: int  # 1, 2, ... per table: the value ``committed`` takes once this batch is in
    lines: list  # the input line of each row
    rows: list  # cleaned rows, in the table's column order
    after: dict  # parent table -> batches of it that must be committed first
    recheck: frozenset = frozenset()  # indexes of rows whose parents must be looked up again


class Written(NamedTuple):
    """What a writer did with one job."""

    stored: int
    present: int
    rejections: list  # core.report.Rejection


class Report(NamedTuple):
    """A writer's message to the main process."""

    kind: str  # "batch", "failed", "aborted" or "done"
    table: str
    written: Written | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class Aborted(Exception):
    """The run is being stopped; the writer leaves its open transaction uncommitted."""


class Gate:
    """What a writer may know of the others: their committed batches and their flags."""

    def __init__(self, committed, flagged, abort):
        self.committed = committed
        self.flagged = flagged
        self.abort = abort
        self.needs = {}

    def wait_for_parents(self):
        """Return once every parent batch the current job needs is committed."""
        for table, count in self.needs.items():
            while self.committed[table].value < count:
                if self.abort.is_set():
                    raise Aborted
                time.sleep(0.002)

    def any_flagged(self, tables):
        """Whether a writer of one of tables rejected rows at write time."""
        return any(self.flagged[t].value for t in tables if t in self.flagged)


def _writer_main(table, make_writer, describe, inbox, outbox, committed, flagged, abort):
    """Body of one writer process: commit jobs in order, report each, then exit."""
    gate = Gate(committed, flagged, abort)
    try:
        writer = make_writer(table, gate)
        while (job := inbox.get()) is not None:
            gate.needs = job.after
            started = time.time()
            written = writer.write(job)
            if written.rejections:
                flagged[table].value = 1  # before the watermark moves: children re-check
            committed[table].value = job.seq
            outbox.put(Report("batch", table, written, started, time.time()))
        finish = getattr(writer, "finish", None)
        if finish is not None:  # e.g. build the indexes a load deferred
            finish()
    except Aborted:
        outbox.put(Report("aborted", table))
    except (DatabaseError, OSError, RuntimeError) as exc:
        abort.set()
        outbox.put(Report("failed", table, error=f"{table} writer ({describe(table)}): {exc}"))
    finally:
        connections.close_all()
    outbox.put(Report("done", table))


class WriterPool:
    """One writer process per table, fed through bounded queues."""

    def __init__(self, table_names, make_writer, describe=str):
        # fork keeps the test databases and settings of the caller; connections are closed
        # first so no process inherits an open one.
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.tables = list(table_names)
        self.make_writer = make_writer
        self.describe = describe
        self.committed = {t: self.context.Value("q", 0, lock=False) for t in self.tables}
        self.flagged = {t: self.context.Value("b", 0, lock=False) for t in self.tables}
        self.abort = self.context.Event()
        self.outbox = self.context.Queue()
        self.inboxes = {t: self.context.Queue(QUEUE_BATCHES) for t in self.tables}
        self.sent = dict.fromkeys(self.tables, 0)
        self.done = set()
        self.processes = {}
        self.error = None

    def start(self):
        connections.close_all()
        for table in self.tables:
            process = self.context.Process(
                target=_writer_main,
                name=f"multids-{table}-writer",
                args=(
                    table,
                    self.make_writer,
                    self.describe,
                    self.inboxes[table],
                    self.outbox,
                    self.committed,
                    self.flagged,
                    self.abort,
                ),
                daemon=True,
            )
            process.start()
            self.processes[table] = process

    def send(self, table, lines, rows, after, on_report, recheck=frozenset()):
        """Queue one batch for table's writer; on_report(report) gets every report meanwhile."""
        self.sent[table] += 1
        job = Job(self.sent[table], lines, rows, after, recheck)
        while True:
            try:
                self.inboxes[table].put(job, timeout=POLL_SECONDS)
                break
            except queue.Full:
                self.collect(on_report)
                self._check_alive(on_report)
        self.collect(on_report)

    def collect(self, on_report, timeout=None):
        """Hand every report that has arrived to on_report; wait up to timeout for the first."""
        while True:
            try:
                message = self.outbox.get(timeout=timeout) if timeout else self.outbox.get_nowait()
            except queue.Empty:
                return
            timeout = None
            if message.kind == "failed":
                self.error = self.error or message.error
            elif message.kind == "done":
                self.done.add(message.table)
            elif message.kind == "batch":
                on_report(message)

    def _check_alive(self, on_report):
        """Raise LoadError if a writer failed or died without saying it was done.

        A writer's last messages reach the queue's pipe before its process exits, but may
        still be unread here: drain them before taking an exited writer for a crashed one.
        """
        if not self.error and any(
            t not in self.done and not p.is_alive() for t, p in self.processes.items()
        ):
            self.collect(on_report)
        if self.error:
            raise LoadError(self.error)
        for table, process in self.processes.items():
            if table not in self.done and not process.is_alive():
                raise LoadError(
                    f"the {table} writer stopped unexpectedly (exit {process.exitcode})"
                )

    def finish(self, on_report):
        """Tell every writer there is nothing more, and wait until each has said it is done."""
        for table in self.tables:
            while True:
                try:
                    self.inboxes[table].put(None, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    self.collect(on_report)
                    self._check_alive(on_report)
        while self.done != set(self.tables):
            self.collect(on_report, timeout=POLL_SECONDS)
            self._check_alive(on_report)
        if self.error:
            raise LoadError(self.error)

    def close(self):
        """Stop every writer (called once, in finally): after finish() they have exited;
        after a failure they are aborted."""
        self.abort.set()
        for process in self.processes.values():
            process.join(timeout=1)
            if process.is_alive():
                process.terminate()
                process.join()
        for q in (*self.inboxes.values(), self.outbox):
            q.cancel_join_thread()
            q.close()
