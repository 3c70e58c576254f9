"""Writer processes: one per table, fed through bounded queues, reporting back one queue.

The pool knows nothing of what a table holds. It starts one process per table, sends each
its jobs in order, and shares two facts per table between the processes: how many batches
the table's writer has committed (``committed``) and whether it has rejected rows at write
time (``flagged``). A job names the batches of other tables that must be committed before
it may commit (``Job.after``); each writer's ``crossdb.loading.gate.Gate`` holds it to that
order (the commit-order protocol lives there).

``make_writer(table, gate)`` builds the object that writes in the child; its
``write(job)`` commits one batch and returns a ``Written`` (or, when jobs joined it, a list
of (job, Written) in order); its optional ``finish()`` runs after the last job, before the
writer reports that it is done.

Writers die with their run. A writer holds a database open and, while it waits for its
parents, an open transaction (SQLite's write lock); one that outlived a killed main process
would block every later load. So each writer asks the kernel to kill it when the main
process dies (``PR_SET_PDEATHSIG`` on Linux), and every wait it makes (for a job, for its
parents) also checks that the main process is still its parent, so it stops within
``POLL_SECONDS`` where prctl does not exist. There a watchdog thread makes the same check
as well, because one wait cannot make it: a main process killed while writing a job into
the pipe leaves the writer blocked reading the rest, which never comes (every writer
inherited the pipe's write end, so no end of file comes either). The wait for parents is
bounded too (``gate.PARENT_WAIT_SECONDS``), so no transaction is held open for ever. Writers
ignore SIGINT (Ctrl-C reaches the whole process group; the main process stops them) and
keep SIGTERM's default action.

``PARENT_WATCH`` is a hook for tests: "off" switches the parent watch off, "no-prctl" only
the kernel's part, leaving the checks in the waits. It exists only so the test suite can
show what each part does (tests/test_processes.py); never change it otherwise.
"""

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from typing import NamedTuple

from django.db import DatabaseError, connections

from crossdb.loading.gate import POLL_SECONDS, Aborted, Gate, Orphaned

log = logging.getLogger(__name__)

QUEUE_BATCHES = 2  # batches waiting per writer; bounds memory whatever the input size
STOP_GRACE_SECONDS = 0.5  # for writers to notice an abort before they are terminated
PARENT_WATCH = "on"  # a hook for tests: "off" or "no-prctl" (see the module docstring)
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LoadError(Exception):
    """A failure that stops the run (a database error, a writer that died)."""


def first_line(exc):
    """The first line of exc's message: PostgreSQL adds CONTEXT and DETAIL lines, and
    libpq's "server closed the connection unexpectedly" two lines of guesses, to what
    must stay a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Job(NamedTuple):
    """One batch for one writer."""

    seq: int  # 1, 2, ... per table: the value ``committed`` takes once this batch is in
    lines: list  # the input line of each row (a Block's: an array, or None if generated)
    rows: list  # cleaned rows in the table's column order (a Block's: one integer array)
    after: dict  # parent table -> batches of it that must be committed first
    recheck: frozenset = frozenset()  # indexes of rows whose parents must be looked up again


class Written(NamedTuple):
    """What a writer did with one job."""

    stored: int
    present: int
    rejections: list  # crossdb.results.Rejection
    updated: int = 0  # rows written over stored rows with their ids (on_conflict "update")
    skipped: int = 0  # rows whose id is stored with other data, kept (on_conflict "skip")


class Report(NamedTuple):
    """A writer's message to the main process."""

    kind: str  # "batch", "failed", "aborted" or "done"
    table: str
    written: Written | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None


def _watch_disabled(part="all"):
    """Whether the test hook turns off part ("all" or "prctl") of the parent watch."""
    return PARENT_WATCH == "off" or (part == "prctl" and PARENT_WATCH == "no-prctl")


def die_with_parent():
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only).

    Return whether it was arranged. The kernel then ends the writer even while it is blocked
    inside the database (a busy wait, a lock wait), which no check in Python can.
    """
    if not sys.platform.startswith("linux") or _watch_disabled("prctl"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ParentWatch:
    """Whether the process that started this writer is still alive (it is our parent)."""

    def __init__(self, parent_pid):
        self.parent_pid = parent_pid
        self.enabled = not _watch_disabled()

    def check(self):
        """Raise Orphaned if the main process has died (we were re-parented)."""
        if self.enabled and os.getppid() != self.parent_pid:
            raise Orphaned

    def start_watchdog(self, table):
        """End this process within POLL_SECONDS of the main process's death, wherever the
        writer is blocked: what PR_SET_PDEATHSIG does where it exists. The database rolls
        back the open transaction, if any, as it does for a kill."""

        def watch():
            while os.getppid() == self.parent_pid:
                time.sleep(POLL_SECONDS)
            log.info("%s writer: the main process is gone; stopped", table)
            os._exit(0)

        threading.Thread(target=watch, name=f"multids-{table}-watchdog", daemon=True).start()


class Inbox:
    """A writer's queue of jobs, read so that a wait never outlives the run or the main
    process, with room to put jobs back at its front (``Gate.wait_for_parents``)."""

    def __init__(self, queue_, abort, watch):
        self.queue = queue_
        self.abort = abort
        self.watch = watch
        self.back = []  # jobs (or the end, None) put back, to be read before the queue

    def next(self):
        """Return the next job, or None at the end; never block for more than POLL_SECONDS
        without checking that the run goes on and the main process lives.

        The main process is checked before every job too: a writer whose queue is full
        when the main process dies must not write out the whole queue first (without
        PR_SET_PDEATHSIG that took more than 5 s once the main process filled queues
        faster).
        """
        self.watch.check()
        if self.back:
            return self.back.pop(0)
        while True:
            try:
                return self.queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.abort.is_set():
                    raise Aborted from None
                self.watch.check()

    def queued(self, timeout):
        """The next job if there is one within timeout, else None once timeout has passed;
        the end of the run is never taken: it stays next."""
        if self.back and self.back[0] is not None:
            return self.back.pop(0)
        if self.back:  # the end: nothing can come after it
            time.sleep(timeout)
            return None
        try:
            job = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if job is None:
            self.back.append(None)
        return job

    def put_back(self, *jobs):
        self.back[:0] = jobs

    def at_end(self):
        """Whether the end of the run is next (read already, and put back)."""
        return bool(self.back) and self.back[0] is None


def _writer_main(
    table, make_writer, describe, inbox, outbox, committed, flagged, abort, parent_pid
):
    """Body of one writer process: commit jobs in order, report each, then exit."""
    # Started with SIGINT and SIGTERM blocked (WriterPool.start): set this process's own
    # dispositions before anything can be delivered, so the main process's handlers
    # never run here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    watch = ParentWatch(parent_pid)
    if not die_with_parent() and watch.enabled:
        watch.start_watchdog(table)
    jobs = Inbox(inbox, abort, watch)
    gate = Gate(committed, flagged, abort, watch, inbox=jobs)
    try:
        watch.check()  # the main process may have died before prctl took effect
        writer = make_writer(table, gate)
        while (job := jobs.next()) is not None:
            gate.needs = dict(job.after)
            started = time.time()
            written = writer.write(job)
            finished = time.time()
            for done, result in [(job, written)] if isinstance(written, Written) else written:
                if result.rejections:
                    flagged[table].value = 1  # before the watermark moves: children re-check
                committed[table].value = done.seq
                outbox.put(Report("batch", table, result, started, finished))
        finish = getattr(writer, "finish", None)
        if finish is not None:  # e.g. build the indexes a load deferred
            finish()
    except Orphaned:
        log.info("%s writer: the main process is gone; rolled back and stopped", table)
        outbox.cancel_join_thread()  # nobody will read what is still in the queue
        return
    except Aborted:
        outbox.put(Report("aborted", table))
    except (DatabaseError, OSError, RuntimeError) as exc:
        abort.set()
        error = f"{table} writer ({describe(table)}): {first_line(exc)}"
        outbox.put(Report("failed", table, error=error))
    finally:
        connections.close_all()
    outbox.put(Report("done", table))


class WriterPool:
    """One writer process per table, fed through bounded queues."""

    def __init__(self, table_names, make_writer, describe=str):
        # fork keeps the test databases and settings of the caller; connections are closed
        # first so no process inherits an open one.
        methods = multiprocessing.get_all_start_methods()
        self.context = (
            multiprocessing.get_context("fork")
            if "fork" in methods
            else multiprocessing.get_context("spawn")
        )
        self.tables = list(table_names)
        self.make_writer = make_writer
        self.describe = describe
        self.committed = {t: self.context.Value("q", 0, lock=False) for t in self.tables}
        self.flagged = {t: self.context.Value("b", 0, lock=False) for t in self.tables}
        self.abort = self.context.Event()
        self.outbox = self.context.Queue()
        self.inboxes = {t: self.context.Queue(QUEUE_BATCHES) for t in self.tables}
        self.sent = dict.fromkeys(self.tables, 0)
        self.sizes: dict[str, list[int]] = {
            t: [] for t in self.tables
        }  # rows of each batch sent, in order
        self.done = set()
        self.ended = set()  # the tables whose writer was told there is nothing more
        self.processes = {}
        self.error = None

    def start(self):
        connections.close_all()
        # Block SIGINT/SIGTERM while forking: a child inherits the mask and unblocks them
        # only after replacing the main process's handlers with its own.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._start_processes()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _start_processes(self):
        # PR_SET_PDEATHSIG fires when the forking *thread* ends: start the pool from the
        # thread that runs the load (the main thread for the command).
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
                    os.getpid(),
                ),
                daemon=True,
            )
            process.start()
            self.processes[table] = process

    def send(self, table, lines, rows, after, on_report, recheck=frozenset()):
        """Queue one batch for table's writer; on_report(report) gets every report meanwhile."""
        self.sent[table] += 1
        self.sizes[table].append(len(rows))
        self._put(table, Job(self.sent[table], lines, rows, after, recheck), on_report)
        self.collect(on_report)

    def _put(self, table, item, on_report):
        """Put item (a Job, or None: the end) in table's inbox, reading the reports and
        checking on the writers while it is full."""
        while True:
            try:
                self.inboxes[table].put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                self.collect(on_report)
                self._check_alive(on_report)

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

    def committed_rows(self, table):
        """Rows in the batches table's writer has committed, from the count it shares
        (``committed``), whether or not its reports have been read: after a stop, the
        reports still in the queue are never read, but their rows are kept."""
        return sum(self.sizes[table][: self.committed[table].value])

    def _exited_normally_unheard(self, tables):
        return any(t not in self.done and self.processes[t].exitcode == 0 for t in tables)

    def _check_alive(self, on_report):
        """Raise LoadError if a writer failed or died without saying it was done.

        A writer's last messages reach the queue's pipe before its process exits, but may
        still be unread here: drain them before taking an exited writer for a crashed one.
        Only the writers seen exited before the drain are judged: one that exits during it
        may have sent its "done" after the drain read the pipe, and is judged at the next
        call, after the next drain (asking is_alive() again here made a load fail, about
        once in a hundred on a busy machine, with "stopped unexpectedly (exit 0)").
        """
        exited = [t for t, p in self.processes.items() if t not in self.done and not p.is_alive()]
        if not self.error and exited:
            self.collect(on_report)
            # A writer that exited normally has sent "done"; give a message still on its
            # way (seen once in a long run of the checker) a moment before calling it lost.
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while (
                not self.error
                and self._exited_normally_unheard(exited)
                and time.monotonic() < deadline
            ):
                self.collect(on_report, timeout=POLL_SECONDS / 4)
        if self.error:
            raise LoadError(self.error)
        for table in exited:
            if table not in self.done:
                raise LoadError(
                    f"the {table} writer stopped unexpectedly "
                    f"(exit {self.processes[table].exitcode})"
                )

    def end(self, table, on_report):
        """Tell table's writer there is nothing more for it (it finishes, then exits: its
        deferred indexes are built while the other writers go on)."""
        if table not in self.ended:
            self.ended.add(table)
            self._put(table, None, on_report)

    def finish(self, on_report):
        """Tell every writer there is nothing more, and wait until each has said it is done."""
        for table in self.tables:
            self.end(table, on_report)
        while self.done != set(self.tables):
            self.collect(on_report, timeout=POLL_SECONDS)
            self._check_alive(on_report)
        if self.error:
            raise LoadError(self.error)

    def close(self):
        """Stop every writer (called once, in finally): after finish() they have exited;
        after a failure or a stop they are aborted, and those still busy after
        STOP_GRACE_SECONDS (in the middle of a batch) are terminated."""
        self.abort.set()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()  # mid-batch: its transaction dies uncommitted with it
        for process in self.processes.values():
            process.join()
        for q in (*self.inboxes.values(), self.outbox):
            q.cancel_join_thread()
            q.close()
