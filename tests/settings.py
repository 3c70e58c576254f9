"""Settings for the test suite: the project's settings, with every SQLite file in a fresh
temporary directory so tests never touch a user's databases and two runs never collide.

The suite also declares a fourth table in a fourth database (``tests.reviews``: reviews
naming a user and a product) without any change to ``core``: the loader, the guard,
``check_integrity``, the deletes and the admin must all handle it from its declarations.
``MULTIDS_TEST_DATA_DIR`` names the directory instead (for subprocesses of one test).
"""

import os
import tempfile

os.environ["MULTIDS_DATA_DIR"] = os.environ.get("MULTIDS_TEST_DATA_DIR") or tempfile.mkdtemp(
    prefix="multids-tests-"
)

from multids.settings import *  # noqa: E402, F403
from multids.settings import (  # noqa: E402
    CROSSDB,
    DATABASE_SOURCES,
    DATABASES,
    INSTALLED_APPS,
    REPLICA_DATABASES,
    database_config,
    replica_databases,
)

INSTALLED_APPS = [*INSTALLED_APPS, "tests.reviews", "tests.kinds"]
DATABASE_SOURCES["reviews_db"] = ("REVIEWS_DATABASE_URL", "reviews.db")
# Children's databases before their parents': a transactional test ends by flushing every
# database in this order, and ``flush`` refuses a database whose rows other databases name
# (core/management/commands/flush.py), as it would for anyone else.
FLUSH_ORDER = ["default", "orders_db", "reviews_db", "users_db", "products_db"]
DATABASES = {**DATABASES, "reviews_db": database_config("reviews_db")}
_REVIEWS_REPLICAS, _REVIEWS_REPLICA_ALIASES = replica_databases(
    {"reviews_db": DATABASES["reviews_db"]}
)
# Replicas (tests/test_replicas.py's processes) after their primaries.
DATABASES = {
    **{alias: DATABASES[alias] for alias in FLUSH_ORDER},
    **REPLICA_DATABASES,
    **_REVIEWS_REPLICAS,
}
CROSSDB = {
    **CROSSDB,
    "REPLICAS": {**CROSSDB["REPLICAS"], **_REVIEWS_REPLICA_ALIASES},
    "DATABASES_FOR_MODELS": {
        **CROSSDB["DATABASES_FOR_MODELS"],
        "reviews.review": "reviews_db",
        # every kind of field crossdb loads (tests/kinds): a parent and a child, in
        # databases that hold other tables too
        "kinds.shelf": "products_db",
        "kinds.item": "reviews_db",
    },
}
