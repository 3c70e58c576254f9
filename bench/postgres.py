"""The PostgreSQL half of the benchmark: insert_data against plain COPY, in the same run.

    python -m bench.postgres WORKLOAD_DIR      (users.csv, products.csv, orders.csv)

``run_postgres_bench(workload_dir)`` creates fresh databases on the server named by
``MULTIDS_POSTGRES_ADMIN_URL`` (default ``postgresql://multids@127.0.0.1:5432/postgres``,
the role ``.ci/setup-postgres.sh`` creates), one per table as if each lived on its own
server, migrates them (not measured), then measures:

* the reference: each CSV file streamed with psycopg 3 COPY straight into its migrated
  table (same indexes and constraints), no validation, one transaction per file;
* ``manage.py insert_data --from DIR --no-progress`` with ``USERS_DATABASE_URL``,
  ``ORDERS_DATABASE_URL`` and ``PRODUCTS_DATABASE_URL`` pointing at a second set of fresh
  databases, timed as the whole process (start-up included, as a user waits for it).

Both are counted from the databases afterwards; the databases are dropped at the end.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://multids@127.0.0.1:5432/postgres"
TABLES = ("users", "products", "orders")
ALIAS_VARIABLES = {
    "users": "USERS_DATABASE_URL",
    "products": "PRODUCTS_DATABASE_URL",
    "orders": "ORDERS_DATABASE_URL",
}


class BenchError(Exception):
    """The PostgreSQL bench cannot run or produced a wrong result."""


def admin_url():
    return os.environ.get("MULTIDS_POSTGRES_ADMIN_URL") or ADMIN_URL


def database_url(name):
    """The admin URL with its database name replaced by name."""
    return urlsplit(admin_url())._replace(path=f"/{name}").geturl()


def _manage(*args, env, timeout=3600):
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment |= {"DJANGO_SETTINGS_MODULE": "multids.settings"} | env
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=environment,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


class FreshDatabases:
    """One new database per alias, migrated; dropped on exit."""

    def __init__(self, label):
        tag = f"{label}_{uuid.uuid4().hex[:8]}"
        self.names = {t: f"multids_bench_{tag}_{t}" for t in TABLES} | {
            "default": f"multids_bench_{tag}_default"
        }
        variables = ALIAS_VARIABLES | {"default": "DATABASE_URL"}
        self.env = {variables[k]: database_url(n) for k, n in self.names.items()}

    def __enter__(self):
        try:
            admin = psycopg.connect(admin_url(), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
            raise BenchError(
                f"cannot reach PostgreSQL at {admin_url()} ({first_line}); "
                "run: bash .ci/setup-postgres.sh"
            ) from exc
        with admin:
            for name in self.names.values():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            result = _manage("migrate_all", env=self.env)
            if result.returncode:
                raise BenchError(f"migrate_all failed: {result.stderr.strip()[-500:]}")
        except BaseException:
            self.drop()
            raise
        return self

    def __exit__(self, *exc):
        self.drop()

    def drop(self):
        with psycopg.connect(admin_url(), autocommit=True) as admin:
            for name in self.names.values():
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def count(self):
        total = 0
        for table in TABLES:
            with psycopg.connect(database_url(self.names[table])) as db:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                total += db.execute(query).fetchone()[0]
        return total


def reference(workload_dir, databases):
    """Plain psycopg COPY of each CSV into its table: no validation, no parsing in Python."""
    started = time.perf_counter()
    for table in TABLES:
        path = Path(workload_dir) / f"{table}.csv"
        with (
            open(path, "rb") as handle,
            psycopg.connect(database_url(databases.names[table])) as db,
        ):
            header = handle.readline().decode().strip().split(",")
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, header))
            )
            with db.cursor() as cursor, cursor.copy(statement) as copy:
                while block := handle.read(1 << 20):
                    copy.write(block)
    return time.perf_counter() - started


def insert_data(workload_dir, databases):
    started = time.perf_counter()
    result = _manage("insert_data", "--from", str(workload_dir), "--no-progress", env=databases.env)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise BenchError(f"insert_data failed: {result.stderr.strip()[-500:]}")
    return seconds


def expected_rows(workload_dir):
    total = 0
    for table in TABLES:
        with open(Path(workload_dir) / f"{table}.csv", "rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def run_postgres_bench(workload_dir):
    """Measure the reference COPY and insert_data on PostgreSQL; return rows/s and the ratio.

    Raises BenchError (one line) when the server is unreachable or a count is wrong.
    """
    expected = expected_rows(workload_dir)
    with FreshDatabases("reference") as databases:
        ref_seconds = reference(workload_dir, databases)
        ref_rows = databases.count()
    with FreshDatabases("insert_data") as databases:
        seconds = insert_data(workload_dir, databases)
        rows = databases.count()
    for label, stored in (("the reference", ref_rows), ("insert_data", rows)):
        if stored != expected:
            raise BenchError(f"{label} stored {stored:,} rows on PostgreSQL, expected {expected:,}")
    ref_rate, rate = ref_rows / ref_seconds, rows / seconds
    return {
        "rows": expected,
        "reference_seconds": round(ref_seconds, 2),
        "reference_rows_per_s": round(ref_rate),
        "insert_data_seconds": round(seconds, 2),
        "insert_data_rows_per_s": round(rate),
        "ratio": round(rate / ref_rate, 2),
    }


def table_rows(figures, prefix=""):
    """The two result lines, as markdown table rows (a sixth, empty memory column)."""
    return [
        f"| {prefix}plain psycopg COPY, no validation (reference) | {figures['rows']:,} | "
        f"{figures['reference_seconds']:.2f} | {figures['reference_rows_per_s']:,} | 1.00 | |",
        f"| {prefix}`insert_data --from` (validated, whole process) | {figures['rows']:,} | "
        f"{figures['insert_data_seconds']:.2f} | {figures['insert_data_rows_per_s']:,} | "
        f"{figures['ratio']:.2f} | |",
    ]


def markdown(figures):
    """The PostgreSQL table on its own."""
    return "\n".join(
        [
            "| approach (PostgreSQL) | rows | seconds | rows/s | ratio to reference | |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *table_rows(figures),
        ]
    )


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m bench.postgres WORKLOAD_DIR")
    try:
        print(markdown(run_postgres_bench(args[0])))
    except (BenchError, OSError, psycopg.Error) as exc:
        sys.exit(f"bench.postgres: {str(exc).strip().splitlines()[0]}")


if __name__ == "__main__":
    main()
