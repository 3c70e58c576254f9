"""Measurements behind the choices of issue 9, each in a fresh process (not part of make bench).

    python -m bench.experiments sqlite-orders      1M orders through today's BulkWriter:
                                                   indexes in place / dropped then rebuilt,
                                                   bigint or rowid primary key
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

ROWID_ORDERS = (
    'CREATE TABLE "orders_rowid" ("id" integer NOT NULL PRIMARY KEY, '
    '"user_id" bigint NOT NULL, "product_id" bigint NOT NULL, "quantity" integer NOT NULL, '
    'CONSTRAINT "orders_quantity_gte_1" CHECK ("quantity" >= 1))'
)


def _orders(workload_dir):
    with open(Path(workload_dir) / "orders.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [tuple(int(v) for v in row) for row in reader]


def _rowid(db_path):
    """Rewrite orders with an INTEGER PRIMARY KEY (a rowid alias), keeping its indexes."""
    db = sqlite3.connect(db_path, isolation_level=None)
    indexes = [
        r[0]
        for r in db.execute("SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")
    ]
    db.execute(ROWID_ORDERS)
    db.execute("DROP TABLE orders")
    db.execute('ALTER TABLE "orders_rowid" RENAME TO "orders"')
    for statement in indexes:
        db.execute(statement)
    db.close()


def sqlite_child(mode, batch_size):
    """In a process whose MULTIDS_DATA_DIR is migrated: load the orders, print seconds."""
    import django

    django.setup()
    from core import indexes
    from core.models import Order
    from core.writers import BulkWriter

    rows = _orders(OUT / "workload")
    started = time.perf_counter()
    if "deferred" in mode:
        indexes.drop_for_load("orders_db", Order)
    writer = BulkWriter("orders", "orders_db")
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        writer.write(batch, list(range(start, start + len(batch))))
    loaded = time.perf_counter()
    built = indexes.rebuild("orders_db", Order)
    finished = time.perf_counter()
    print(f"{loaded - started:.2f} {finished - loaded:.2f} {len(built)}")


def sqlite_orders():
    from bench.__main__ import fresh_databases, manage

    print("| orders into SQLite (1M, BulkWriter, 50k batches) | load s | build s | total s |")
    print("| --- | ---: | ---: | ---: |")
    modes = sys.argv[2:] or ["in-place", "deferred", "rowid in-place", "rowid deferred"]
    for mode in modes:
        data_dir = fresh_databases(f"exp-{mode.replace(' ', '-')}")
        if "rowid" in mode:
            _rowid(data_dir / "orders.db")
        process = manage(
            data_dir,
            "shell",
            "-c",
            f"from bench.experiments import sqlite_child; sqlite_child({mode!r}, 50_000)",
        )
        out, err = process.communicate()
        if process.returncode:
            sys.exit(err)
        load, build, _n = out.split()[-3:]
        print(f"| {mode} | {load} | {build} | {float(load) + float(build):.2f} |", flush=True)


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    what = sys.argv[1] if len(sys.argv) > 1 else "sqlite-orders"
    {"sqlite-orders": sqlite_orders}[what]()


if __name__ == "__main__":
    main()
