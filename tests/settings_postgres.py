"""Settings for running the in-process test suite against PostgreSQL instead of SQLite.

    pytest --ds tests.settings_postgres -m "django_db and not sqlite_files" tests

Every alias points at the server named by ``MULTIDS_POSTGRES_ADMIN_URL`` (default
``postgresql://multids@127.0.0.1:5432/postgres``, the role ``.ci/setup-postgres.sh``
creates). pytest-django creates one test database per alias, as if each lived on its own
server, with a random suffix so two runs on one server never collide, and drops them at
the end. ``tests/test_postgres.py`` runs this from plain ``make test``.
"""

import os
import uuid
from urllib.parse import urlsplit

import dj_database_url

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

ADMIN_URL = os.environ.get("MULTIDS_POSTGRES_ADMIN_URL") or (
    "postgresql://multids@127.0.0.1:5432/postgres"
)
_RUN = uuid.uuid4().hex[:8]


def _postgres(alias):
    url = urlsplit(ADMIN_URL)._replace(path=f"/multids_{alias}").geturl()
    config = dj_database_url.parse(url, conn_max_age=0)
    config["TEST"] = {"NAME": f"multids_test_{_RUN}_{alias}"}
    return config


DATABASES = {alias: _postgres(alias) for alias in DATABASES}
