"""The commit-order protocol: a child batch commits only after the parent batches it needs.

Three database files cannot share a transaction, so the loader keeps references true by
the order of commits. Each writer process publishes how many batches of its table it has
committed (``committed``, one shared counter per table) and whether it rejected rows at
write time (``flagged``). A job names, per parent table, the batches sent before it
(``Job.after``); its writer opens the batch's transaction, then ``Gate.wait_for_parents``
blocks until each of those is committed, and only then commits. A parent committed after
the child began cannot be missing: the child's writer re-checks in the guard when a parent
was flagged or deleted meanwhile (``crossdb.loading.writers``).

While a child waits it holds an open transaction (SQLite's write lock), so every wait here
is bounded: the run is stopped (``Aborted``), the main process is gone (``Orphaned``, from
the writer's ``ParentWatch``), or the parents take longer than ``PARENT_WAIT_SECONDS``
(``ParentsTooSlow``). The jobs queued meanwhile may join the waiting transaction (up to
``JOIN_LIMIT``), which keeps a child writer busy while its parents commit.
"""

import time

JOIN_LIMIT = 8  # jobs one transaction may hold while its parents commit
POLL_SECONDS = 0.2  # how often a wait looks at the run and the main process
PARENT_WAIT_SECONDS = 600.0  # a parent batch commits in about a second; this is a hang


class Aborted(Exception):
    """The run is being stopped; the writer leaves its open transaction uncommitted."""


class Orphaned(Aborted):
    """The main process is gone; nobody reads this writer's reports any more."""


class ParentsTooSlow(RuntimeError):
    """A parent batch was not committed within PARENT_WAIT_SECONDS."""


class Gate:
    """What a writer may know of the others: their committed batches and their flags."""

    def __init__(self, committed, flagged, abort, watch=None, limit=None, inbox=None):
        self.committed = committed
        self.flagged = flagged
        self.abort = abort
        self.watch = watch  # the writer's ParentWatch; None where no main process is watched
        self.limit = PARENT_WAIT_SECONDS if limit is None else limit
        self.inbox = inbox  # this writer's Inbox: the jobs queued after the current one
        self.needs = {}

    def _waiting_for(self):
        """The (table, batch) pairs the current job needs that are not committed yet."""
        return [(t, c) for t, c in self.needs.items() if self.committed[t].value < c]

    def wait_for_parents(self, join=None):
        """Return once every parent batch the current job needs is committed.

        The caller holds an open transaction, so the wait is bounded three ways: the run
        is stopped (``Aborted``), the main process died (``Orphaned``), or the parents took
        longer than ``limit`` seconds (``ParentsTooSlow``, which fails the run).

        join(job), if given, is offered each job queued meanwhile (up to JOIN_LIMIT in all):
        it writes the job into the same open transaction and returns True, or returns False
        and the job stays next in the queue. The wait covers a job's parents before it is
        offered, so the transaction commits every job it holds once every parent of each is
        committed (also when join raises: a careful rewrite waits as long). It keeps a child
        writer busy while its parents commit (the orders writer while users load) instead
        of holding one batch and sleeping.
        """
        deadline = time.monotonic() + self.limit
        joined = 1
        while waiting := self._waiting_for():
            if self.abort.is_set():
                raise Aborted
            if self.watch is not None:
                self.watch.check()
            if time.monotonic() > deadline:
                table, count = waiting[0]
                raise ParentsTooSlow(
                    f"waited {self.limit:g} s for {table} batch {count} to be committed "
                    f"({self.committed[table].value} committed so far); "
                    f"is another process holding the {table} database?"
                )
            if join is None or joined >= JOIN_LIMIT or self.inbox is None:
                time.sleep(0.002)
                continue
            job = self.inbox.queued(timeout=0.002)
            if job is None:
                continue
            if self._offer(job, join):
                joined += 1
            else:
                join = None

    def keep_joining(self, join, deadline):
        """Offer join every job that comes next, waiting for each, until join refuses one
        (it stays next), the end of the run is next, or time.monotonic() passes deadline.

        For a transaction that takes in a whole table (``crossdb.loading.segment``): the jobs are
        taken as the main process sends them, not only while parents commit. The caller's
        transaction stays open meanwhile, so the wait is bounded as the others are: the run
        is stopped (``Aborted``), the main process died (``Orphaned``), or the deadline
        passed. Each joined job's parents are added to the wait (``wait_for_parents``).
        """
        while time.monotonic() < deadline:
            if self.abort.is_set():
                raise Aborted
            if self.watch is not None:
                self.watch.check()
            if self.inbox.at_end():
                return
            job = self.inbox.queued(timeout=POLL_SECONDS)
            if job is not None and not self._offer(job, join):
                return

    def _offer(self, job, join):
        """Extend the wait to job's parents and offer it to join; a job refused goes back
        to the front of the queue and the wait is as it was. Return whether job joined."""
        before = dict(self.needs)
        for table, count in job.after.items():
            self.needs[table] = max(self.needs.get(table, 0), count)
        if join(job):
            return True
        self.needs = before
        self.inbox.put_back(job)
        return False

    def give_back(self, current, jobs):
        """Put jobs back at the front of the queue, to be written again after current,
        which the wait covers alone again."""
        self.needs = dict(current.after)
        self.inbox.put_back(*jobs)

    def any_flagged(self, tables):
        """Whether a writer of one of tables rejected rows at write time."""
        return any(self.flagged[t].value for t in tables if t in self.flagged)
