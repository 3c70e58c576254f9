import os
import textwrap

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from crossdb import integrity, replicas
from crossdb.databases import location
from crossdb.loading.indexes import repair_and_say as repair_indexes
from crossdb.models import ReferenceGuard

WIDTH = 80


def _where(alias):
    """The database's file relative to the working directory when it is below it."""
    place = location(alias)
    if os.path.isabs(place) and place.startswith(os.getcwd() + os.sep):
        return os.path.relpath(place)
    return place


def _tables(alias):
    return {t for t in connections[alias].introspection.table_names() if t != "django_migrations"}


GUARD_TABLE = ReferenceGuard._meta.db_table


class Command(BaseCommand):
    help = (
        "Apply migrations to every configured database and say, for each, which tables were "
        "created; refuse (exit 1) to leave a table empty while rows of other databases name "
        "its rows. Safe to run again."
    )

    def handle(self, *args, **options):
        lines = []
        for alias in connections:
            if replicas.is_replica(alias):
                continue  # replication writes it
            try:
                before = _tables(alias)
                executor = MigrationExecutor(connections[alias])
                plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
                call_command("migrate", database=alias, verbosity=0, interactive=False)
                created = sorted(_tables(alias) - before)
            except DatabaseError as exc:
                raise CommandError(f"{alias} ({location(alias)}): {exc}") from exc
            finally:
                connections[alias].close()
            lines.append((alias, _where(alias), self.state(plan, created)))
        width = max(len(where) for _alias, where, _state in lines)
        for alias, where, state in lines:
            head = f"{alias:<12} {where:<{width}}  "
            if len(head) > WIDTH - 30:  # long paths: what was done goes below, indented
                self.stdout.write(head.rstrip())
                head = " " * 4
            for number, part in enumerate(textwrap.wrap(state, WIDTH - len(head))):
                self.stdout.write((head if number == 0 else " " * len(head)) + part)
        try:
            repair_indexes(self.stdout)
            unbacked = integrity.unbacked_references()
        except DatabaseError as exc:
            raise CommandError(f"rebuilding a missing index failed: {exc}") from exc
        if unbacked:
            for problem in unbacked:
                self.stdout.write(f"  {problem}")
            raise CommandError(
                f"migrated, but {len(unbacked)} reference(s) name an empty or missing table "
                "(above): its database was lost, emptied or unapplied while rows of another "
                "database still name its rows"
            )
        self.stdout.write(self.style.SUCCESS("All databases migrated."))

    @staticmethod
    def state(plan, created):
        """Say what this run changed in one database: the tables it created, or nothing."""
        if not plan:
            return "up to date"
        if created:
            # the domain tables first; the guard's counters are bookkeeping beside them
            created = sorted(created, key=lambda t: (t == GUARD_TABLE, t))
            return f"created: {', '.join(created)}"
        return f"updated ({len(plan)} migration(s) applied, no new table)"
