"""Every setting of crossdb, each with its default, read from ``settings.CROSSDB`` on use.

A project names only what differs from the defaults::

    CROSSDB = {
        "DATABASES_FOR_MODELS": {"library.member": "members", "library.loan": "loans"},
        "GUARD_TIMEOUT": 10,
    }
    DATABASE_ROUTERS = ["crossdb.routers.DatabaseRouter"]

Read on every use (a dictionary lookup), so ``override_settings`` and test fixtures apply
at once and nothing is read at import time.
"""

from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # "app_label.modelname" -> database alias: the one place that says which model lives
    # where. Models not named here stay on Django's default routing.
    "DATABASES_FOR_MODELS": {},
    # Seconds a delete, check_integrity, an admin save or any guarded write waits for the
    # reference guard (or a lock a load holds) before giving up with one line.
    "GUARD_TIMEOUT": 30.0,
    # Rows per batch a load validates and commits at a time.
    "BATCH_SIZE": 50_000,
    # PostgreSQL: how much of a load into an empty table may go into one transaction whose
    # primary key is built at the commit (crossdb.loading.segment); 0 turns it off.
    "LOAD_SEGMENT_MB": 40,
    # SQLite: the page cache of each insert_data writer connection into a table that holds
    # rows (into an empty table, 8 MB: crossdb.loading.writers.FIRST_LOAD_CACHE_MB).
    "WRITER_CACHE_MB": 64,
    # PostgreSQL: maintenance_work_mem for the index builds after a load.
    "INDEX_BUILD_MEMORY": "256MB",
    # What ``insert_data`` loads when given no --from: a callable (dotted path) returning
    # a source, or None (then --from or a generator's counts are required).
    "DEFAULT_SOURCE": None,
    # The generator behind insert_data --<table> N (a dotted path to a class taking the
    # counts per table and a seed); None: crossdb.sources.generated.GeneratedSource.
    "GENERATOR": None,
    # Where small state files live (the overview's throttle); None: BASE_DIR, else the
    # working directory.
    "STATE_DIR": None,
    # Read replicas (crossdb.replicas, crossdb.causal): primary alias -> [replica aliases],
    # each a DATABASES entry with ENGINE "crossdb.backends.replica". None: every read goes
    # to the primary.
    "REPLICAS": {},
    # A reader that read children reads their parents from a replica only once it has
    # replayed the parents' positions those children depend on; False turns that off
    # (read-your-writes stays on).
    "CAUSAL_READS": True,
    # How long a reader waits for a parent database's replica to replay what the children
    # it read depend on, before it reads the parents from the primary.
    "CAUSAL_WAIT_SECONDS": 2.0,
    # A replica further behind its primary than either bound is skipped.
    "REPLICA_MAX_LAG_SECONDS": 60.0,
    "REPLICA_MAX_LAG_BYTES": 8 * 1024 * 1024,
    # How often a process checks each replica's lag, and how long a failed one is skipped.
    "REPLICA_CHECK_SECONDS": 1.0,
    "REPLICA_RETRY_SECONDS": 5.0,
    # The admin's import pages (crossdb.imports): where uploads and their runs' files are
    # kept (None: "crossdb-imports" in STATE_DIR's directory; never under STATIC_ROOT or
    # MEDIA_ROOT, which a web server may publish), the largest upload accepted (the preview
    # runs in the request, so this bounds its time), and what a zip may unpack to.
    "IMPORT_DIR": None,
    "IMPORT_MAX_BYTES": 20 * 1024 * 1024,
    "IMPORT_MAX_UNPACKED_BYTES": 200 * 1024 * 1024,
    "IMPORT_MAX_MEMBERS": 100,
}


def get(name: str) -> Any:
    """The value of setting name: ``settings.CROSSDB[name]`` if given, else its default."""
    if name not in DEFAULTS:
        raise KeyError(f"crossdb has no setting {name!r}")
    return getattr(settings, "CROSSDB", {}).get(name, DEFAULTS[name])


def state_dir() -> Path:
    configured = get("STATE_DIR") or getattr(settings, "BASE_DIR", None)
    return Path(configured) if configured else Path.cwd()
