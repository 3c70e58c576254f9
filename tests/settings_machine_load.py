"""``tests.settings`` for the ``insert_data`` that ``tests/test_guard_machine.py`` runs beside
its machine: every wait of that process for a SQLite lock gives up after
``MULTIDS_TEST_SQLITE_BUSY_SECONDS`` (default 2) instead of 30 s.

Why: the machine holds transactions open across its steps, and a load that waits for one of
them while holding the orders file (its orders batch waits for a users batch that waits for
the machine's users file) deadlocks with the machine's next write of an order until one side
gives up. The load is the side that must: its exit status does not matter to the machine,
whose own waits (30 s, ``MULTIDS_GUARD_TIMEOUT``) failing would fail the test. On PostgreSQL
the same bound comes from ``PGOPTIONS`` and ``MULTIDS_GUARD_TIMEOUT`` in the load's
environment.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

_BUSY_SECONDS = float(os.environ.get("MULTIDS_TEST_SQLITE_BUSY_SECONDS", "2"))

for _config in DATABASES.values():
    if _config["ENGINE"] == "django.db.backends.sqlite3":
        _config["OPTIONS"] = {**_config.get("OPTIONS", {}), "timeout": _BUSY_SECONDS}
