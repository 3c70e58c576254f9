"""``migrate`` that refuses to unapply a parent's table while other databases name its rows.

``migrate core zero --database users_db`` drops the users table; Django would do it and
leave every order in ``orders_db`` naming users that no longer exist, and a later
``migrate_all`` would quietly create the table again, empty. Here a plan that goes
backwards and may remove rows of a parent table on its database (unapplying the
``CreateModel`` of a routed parent model, or a ``RunPython``/``RunSQL`` whose reverse is not
a no-op) runs only inside ``crossdb.deletion.hold_children``: the children elsewhere are
counted under the exclusive guard, the plan is refused while any exist, and loaders are
kept out until it is done. Forward plans and backward steps that keep the rows (a column,
an index) run as Django runs them.
"""

import contextlib
import contextvars

from django.core.management.base import CommandError
from django.core.management.commands import migrate
from django.db import router
from django.db.migrations import operations
from django.db.models.signals import pre_migrate
from django.dispatch import receiver

from crossdb import deletion, registry
from crossdb.guard import CommitOrderError, GuardTimeout

# The migrate command running in this context: (database, ExitStack holding the guard).
_RUNNING: contextvars.ContextVar[tuple[str | None, contextlib.ExitStack] | None] = (
    contextvars.ContextVar("multids_migrate", default=None)
)


class Command(migrate.Command):
    help = (
        migrate.Command.help
        + " Unapplying the migrations of a table that rows of other databases name (migrate "
        "APP zero --database ALIAS) is refused while such rows exist: delete them, or "
        "unapply the children's database first."
    )

    def handle(self, *args, **options):
        with contextlib.ExitStack() as held:
            token = _RUNNING.set((options["database"], held))
            try:
                return super().handle(*args, **options)
            except (deletion.ChildrenElsewhere, CommitOrderError, GuardTimeout) as exc:
                raise CommandError(str(exc)) from exc
            finally:
                _RUNNING.reset(token)


def _operations(operation):
    if isinstance(operation, operations.SeparateDatabaseAndState):
        for inner in operation.database_operations:
            yield from _operations(inner)
    else:
        yield operation


def _may_remove_rows(migration, using, parents):
    """Whether unapplying migration on using may remove rows of a model in parents
    ({model label (lower case): table name})."""
    app = migration.app_label
    for operation in (o for op in migration.operations for o in _operations(op)):
        if isinstance(operation, operations.CreateModel):
            label = f"{app}.{operation.name_lower}"
            if label in parents and router.allow_migrate(
                using, app, model_name=operation.name_lower
            ):
                return True
        elif isinstance(operation, operations.RunPython):
            if operation.reverse_code is not operations.RunPython.noop:
                return any(label.startswith(f"{app}.") for label in parents)
        elif isinstance(operation, operations.RunSQL):
            if operation.reverse_sql not in (None, operations.RunSQL.noop):
                return any(label.startswith(f"{app}.") for label in parents)
    return False


def removed_parents(plan, using):
    """The parent tables stored in using whose rows the backward steps of plan may remove."""

    parents = {
        s.model._meta.label_lower: s.name
        for s in registry.specs().values()
        if s.alias == using and s.children
    }
    removed: set[str] = set()
    for migration, backwards in plan:
        if backwards and _may_remove_rows(migration, using, parents):
            removed.update(
                table
                for label, table in parents.items()
                if label.startswith(f"{migration.app_label}.")
            )
    return sorted(removed)


@receiver(pre_migrate, dispatch_uid="multids-guard-backward-migrations")
def _hold_children_for_backward_plans(sender, using, plan=None, **kwargs):
    """Before a backward plan runs, hold (or refuse) the children of the tables it drops."""
    running = _RUNNING.get()
    if running is None or running[0] != using or not plan:
        return
    database, held = running
    tables = removed_parents(plan, using)
    if not tables:
        return
    _RUNNING.set((None, held))  # pre_migrate is sent once per app: hold once
    held.enter_context(
        deletion.hold_children(
            using, tables, f"unapply the migrations of {', '.join(tables)} in {using}"
        )
    )
