"""Measurements behind the choices of issue 9, each in a fresh process (not part of make bench).

    python -m bench.experiments sqlite-orders      1M orders through today's BulkWriter:
                                                   indexes in place / dropped then rebuilt,
                                                   today's rowid primary key or the
                                                   bigint one it replaced
    python -m bench.experiments pg-orders          1M orders through PostgresBulkWriter:
                                                   batch size, binary or text COPY,
                                                   synchronous_commit, index builds

Every figure is the wall time of one step inside one process, printed as a table line.
"""

import csv
import os
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-data"

# The orders table before crossdb.fields gave SQLite a rowid primary key: "bigint PRIMARY KEY"
# is not a rowid alias, so the ids are kept in a second B-tree.
BIGINT_ORDERS = (
    'CREATE TABLE "orders_bigint" ("id" bigint NOT NULL PRIMARY KEY, '
    '"user_id" bigint NOT NULL, "product_id" bigint NOT NULL, "quantity" integer NOT NULL, '
    'CONSTRAINT "orders_quantity_gte_1" CHECK ("quantity" >= 1))'
)


def _orders(workload_dir):
    with open(Path(workload_dir) / "orders.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [tuple(int(v) for v in row) for row in reader]


def _bigint(db_path):
    """Rewrite orders with a bigint primary key (not a rowid alias), keeping its indexes."""
    db = sqlite3.connect(db_path, isolation_level=None)
    indexes = [
        r[0]
        for r in db.execute("SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")
    ]
    db.execute(BIGINT_ORDERS)
    db.execute("DROP TABLE orders")
    db.execute('ALTER TABLE "orders_bigint" RENAME TO "orders"')
    for statement in indexes:
        db.execute(statement)
    db.close()


def _writer(deferred):
    """insert_data's orders writer for this backend, on an empty table. Building one drops
    the deferrable indexes (``crossdb.loading.indexes.drop_for_load``); a mode that keeps them in
    place builds them again here, on the empty table, before the clock starts."""
    from crossdb.loading import indexes
    from crossdb.loading.load import writer_for

    from core.models import Order

    writer = writer_for("orders", "orders_db")
    if not deferred:
        indexes.rebuild("orders_db", Order)
    return writer


def _jobs(rows, batch_size):
    """rows as the pool's jobs: consecutive batches, each with its input line numbers."""
    from crossdb.loading.processes import Job

    for seq, start in enumerate(range(0, len(rows), batch_size), start=1):
        batch = rows[start : start + batch_size]
        yield Job(seq, list(range(start, start + len(batch))), batch, after={})


def sqlite_child(mode, batch_size):
    """In a process whose MULTIDS_DATA_DIR is migrated: load the orders, print seconds."""
    import django

    django.setup()
    from crossdb.loading import indexes

    from core.models import Order

    rows = _orders(OUT / "workload-1000000")
    writer = _writer(deferred="deferred" in mode)
    started = time.perf_counter()
    for job in _jobs(rows, batch_size):
        writer.write(job)
    loaded = time.perf_counter()
    built = indexes.rebuild("orders_db", Order)
    finished = time.perf_counter()
    print(f"{loaded - started:.2f} {finished - loaded:.2f} {len(built)}")


def sqlite_orders():
    from bench import measure
    from bench.__main__ import fresh_databases

    print(
        "| orders into SQLite (1M, BulkWriter, 50k batches) | load s | build s | total s "
        "| process CPU s |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    modes = sys.argv[2:] or ["in-place", "deferred", "bigint in-place", "bigint deferred"]
    for mode in modes:
        data_dir = fresh_databases(f"exp-{mode.replace(' ', '-')}")
        if "bigint" in mode:
            _bigint(data_dir / "orders.db")
        measured = measure.run(
            ["-c", f"from bench.experiments import sqlite_child; sqlite_child({mode!r}, 50_000)"],
            env={"MULTIDS_DATA_DIR": str(data_dir)},
            label=mode,
        )
        load, build, _n = measured.stdout.split()[-3:]
        total = float(load) + float(build)
        print(f"| {mode} | {load} | {build} | {total:.2f} | {measured.cpu:.2f} |", flush=True)


PG_MODES = {
    # label: (batch size, COPY format, synchronous_commit off, deferred, parallel, mwm)
    "binary 50k, indexes in place": (50_000, "BINARY", False, False, True, "256MB"),
    "binary 200k": (200_000, "BINARY", False, False, True, "256MB"),
    "binary, one COPY": (1_000_000, "BINARY", False, False, True, "256MB"),
    "text 50k": (50_000, "TEXT", False, False, True, "256MB"),
    "binary 50k, synchronous_commit off": (50_000, "BINARY", True, False, True, "256MB"),
    "deferred, parallel build, 256MB": (50_000, "BINARY", False, True, True, "256MB"),
    "deferred, parallel build, 64MB": (50_000, "BINARY", False, True, True, "64MB"),
    "deferred, one by one, 256MB": (50_000, "BINARY", False, True, False, "256MB"),
    "deferred, 200k, sync off, parallel": (200_000, "BINARY", True, True, True, "256MB"),
}


def _use_copy_format(writer, copy_format):
    """Make writer COPY in copy_format (TEXT, CSV): psycopg's write_row formats each row
    for the statement, where crossdb.loading.postgres would send the binary bytes it packs from an
    array."""

    def copy_rows(raw, statement, rows):
        with raw.copy(statement) as copy:
            copy.set_types(writer.copy_types)
            for row in rows:
                copy.write_row(row)

    writer.copy_sql = writer.copy_sql.replace("FORMAT BINARY", f"FORMAT {copy_format}")
    writer._copy = copy_rows


def pg_child(label):
    """Load the orders into ORDERS_DATABASE_URL through PostgresBulkWriter; print seconds."""
    import django

    django.setup()
    from crossdb.loading import indexes
    from django.db import connections

    from core.models import Order

    batch_size, copy_format, async_commit, deferred, parallel, memory = PG_MODES[label]
    indexes.PARALLEL_BUILDS["postgresql"] = parallel
    indexes.BUILD_SETTINGS_SQL["postgresql"] = [f"SET LOCAL maintenance_work_mem = '{memory}'"]
    rows = _orders(OUT / "workload-1000000")
    writer = _writer(deferred)
    started = time.perf_counter()
    if copy_format != "BINARY":
        _use_copy_format(writer, copy_format)
    connection = connections["orders_db"]
    if async_commit:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
    for job in _jobs(rows, batch_size):
        if async_commit and job.lines[-1] + 1 >= len(rows):
            with connection.cursor() as cursor:  # the last commit flushes all before it
                cursor.execute("SET synchronous_commit = on")
        writer.write(job)
    loaded = time.perf_counter()
    built = indexes.rebuild("orders_db", Order)
    finished = time.perf_counter()
    print(f"{loaded - started:.2f} {finished - loaded:.2f} {len(built)}")


def pg_orders():
    from bench import measure, postgres

    print(
        "| orders into PostgreSQL (1M, PostgresBulkWriter) | load s | build s | total s "
        "| CPU s client + server |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for label in sys.argv[2:] or PG_MODES:
        with postgres.FreshDatabases("exp") as databases:
            tag = databases.names["orders"]
            measured = measure.run(
                ["-c", f"from bench.experiments import pg_child; pg_child({label!r})"],
                env=databases.env,
                label=label,
                server_tag=tag.rsplit("_", 1)[0],
            )
            out = measured.stdout
        load, build, _n = out.split()[-3:]
        print(
            f"| {label} | {load} | {build} | {float(load) + float(build):.2f} "
            f"| {measured.cpu:.2f} + {measured.server_cpu:.2f} |",
            flush=True,
        )


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    what = sys.argv[1] if len(sys.argv) > 1 else "sqlite-orders"
    {"sqlite-orders": sqlite_orders, "pg-orders": pg_orders}[what]()


if __name__ == "__main__":
    main()
