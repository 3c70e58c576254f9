from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from core.databases import location


class Command(BaseCommand):
    help = (
        "Apply migrations to every configured database (default, users_db, orders_db, "
        "products_db) and say what was done for each. Safe to run again."
    )

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        for alias in connections:
            try:
                executor = MigrationExecutor(connections[alias])
                plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
                call_command("migrate", database=alias, verbosity=0, interactive=False)
            except DatabaseError as exc:
                raise CommandError(f"{alias} ({location(alias)}): {exc}") from exc
            tables = connections[alias].introspection.table_names()
            state = f"applied {len(plan)} migration(s)" if plan else "already up to date"
            self.stdout.write(
                f"{alias:<12} {state:<26} {location(alias)}"
                + (
                    f"  tables: {', '.join(t for t in tables if t != 'django_migrations')}"
                    if verbosity > 1
                    else ""
                )
            )
        self.stdout.write(self.style.SUCCESS("All databases migrated."))
