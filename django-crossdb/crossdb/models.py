"""crossdb's own two tables (the guard's deletion counters, the log of loads) and the base of
every routed model, ``GuardedModel``.

Their table names are the ones multids gave them before crossdb was an app of its own, so
databases made then need no change (``crossdb/migrations/0001_initial.py``).
"""

from django.db import models

# The base of every model crossdb routes, as parent or child (its every write path goes
# through the reference guard): imported from here, as Django users expect a model base.
from crossdb.orm import GuardedModel, GuardedQuerySet

__all__ = ["CausalPosition", "GuardedModel", "GuardedQuerySet", "LoadRun", "ReferenceGuard"]


class ReferenceGuard(models.Model):
    """How many parent deletes have committed, per parent table, in a child's database.

    A row per parent table lives in every database that holds children of it; a deleter
    bumps it under the exclusive guard, and a writer that sees it move since its run began
    re-checks its rows' parents before committing (``crossdb.guard``).
    """

    parent = models.CharField(max_length=100, primary_key=True)
    deletions = models.BigIntegerField(default=0)

    class Meta:
        db_table = "multids_reference_guard"

    def __str__(self) -> str:
        return f"{self.parent}: {self.deletions} deletion(s)"


class LoadRun(models.Model):
    """One ``insert_data`` run, kept in ``default`` so the overview page can chart it.

    A run started from the admin's import page (``crossdb.importjobs``) is recorded when it
    starts, as ``running``, and its process writes its progress here (``crossdb.runs``), so
    the page shows how far it got from any web process; the command records a run once it
    is over (``done``).
    """

    RUNNING, DONE, FAILED = "running", "done", "failed"
    STATUSES = [(RUNNING, "running"), (DONE, "done"), (FAILED, "failed")]

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=500)
    summary = models.JSONField()
    status = models.CharField(max_length=10, choices=STATUSES, default=DONE)
    # {table: {"read": rows, "written": rows, "fraction": 0..1 or None}}, while it runs
    progress = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    # what a later run needs to resume this one if it stops (``crossdb.resume``)
    resume = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "load_runs"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.source} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class CausalPosition(models.Model):
    """The highest position of a parent database's primary that rows of this (child)
    database depend on, in a few slots so writers do not queue on one row.

    Written in the transaction of every guarded child write and read by readers of the
    replicas before they read parents (``crossdb.causal``); it lives in every routed
    database and replicates with its rows.
    """

    parent_alias = models.CharField(max_length=100)
    slot = models.SmallIntegerField()
    position = models.BigIntegerField()

    class Meta:
        db_table = "crossdb_causal_positions"
        constraints = [
            models.UniqueConstraint(
                fields=["parent_alias", "slot"], name="crossdb_causal_position_slot"
            )
        ]

    def __str__(self) -> str:
        return f"{self.parent_alias}[{self.slot}]: {self.position}"
