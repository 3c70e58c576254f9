"""What each configured database is, and whether it is ready for a load."""

from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor


class NotReady(Exception):
    """A database cannot take a load yet; the message says what to run."""


def location(alias: str) -> str:
    """Say where alias lives (a file path or host/name), without any password."""
    config = settings.DATABASES[alias]
    if config["ENGINE"].endswith("sqlite3"):
        return str(config["NAME"])
    host = config.get("HOST") or "localhost"
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"{host}{port}/{config['NAME']}"


def sqlite_file_missing(alias: str) -> bool:
    """Whether alias is a SQLite file that does not exist (connecting would create it)."""
    config = settings.DATABASES[alias]
    return config["ENGINE"].endswith("sqlite3") and not Path(str(config["NAME"])).exists()


def vendor(alias: str) -> str:
    return connections[alias].vendor


def check_ready(aliases: Iterable[str]) -> None:
    """Raise NotReady unless every alias can be reached and has all migrations applied.

    Nothing is created: a missing SQLite file is reported instead of being made empty.
    """
    problems = []
    unreachable = False  # migrating cannot help a database we cannot reach
    for alias in aliases:
        if sqlite_file_missing(alias):
            problems.append(f"{alias}: {settings.DATABASES[alias]['NAME']} does not exist")
            continue
        connection = connections[alias]
        try:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except DatabaseError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            problems.append(f"{alias}: cannot reach {location(alias)} ({first_line})")
            unreachable = True
            continue
        finally:
            connection.close()
        if plan:
            problems.append(f"{alias}: {len(plan)} migration(s) not applied")
    if problems:
        hint = "" if unreachable else ". Run: python manage.py migrate_all"
        raise NotReady("; ".join(problems) + hint)
