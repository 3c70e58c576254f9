"""Run the benchmark and print, from one run, each approach as rows/s and as a ratio to the
reference: plain sqlite3 ``executemany`` of the same CSV files, with no validation.

    python -m bench [--orders N] [--naive-orders N] [--no-postgres]

Start-up is included for insert_data (the whole ``manage.py`` process), because that is
what a user waits for. Peak memory is the summed PSS of insert_data and its writer processes.
The PostgreSQL half (``bench.postgres``) follows, against plain psycopg COPY; it needs the
server ``.ci/setup-postgres.sh`` starts, and says so in one line when it cannot reach it.
"""

import argparse
import csv
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import django

from bench.memory import PeakMemory

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-data"


def manage(data_dir, *args, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment |= {"MULTIDS_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "multids.settings"}
    environment |= env or {}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def fresh_databases(name):
    """A migrated data directory; migration is not part of any measurement."""
    data_dir = OUT / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    process = manage(data_dir, "migrate_all")
    _out, err = process.communicate()
    if process.returncode:
        sys.exit(f"bench: migrate_all failed: {err.strip()}")
    return data_dir


def reference(workload_dir, data_dir, cache_mb=None):
    """Plain sqlite3: each CSV straight into its table, one executemany, same journal PRAGMAs
    (and, for the second reference, the page cache insert_data's writers use)."""
    started = time.perf_counter()
    rows = 0
    for table in ("users", "products", "orders"):
        db = sqlite3.connect(data_dir / f"{table}.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if cache_mb:
            db.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
        with open(workload_dir / f"{table}.csv", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            placeholders = ", ".join("?" * len(header))
            db.execute("BEGIN IMMEDIATE")
            cursor = db.executemany(
                f"INSERT INTO {table} ({', '.join(header)}) VALUES ({placeholders})", reader
            )
            rows += cursor.rowcount
            db.execute("COMMIT")
        db.close()
    return rows, time.perf_counter() - started


def insert_data(workload_dir, data_dir):
    started = time.perf_counter()
    process = manage(data_dir, "insert_data", "--from", str(workload_dir), "--no-progress")
    with PeakMemory(process.pid) as memory:
        out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"bench: insert_data failed: {err.strip()}")
    stored = sum(_count(data_dir / f"{t}.db", t) for t in ("users", "products", "orders"))
    return stored, seconds, memory, out


def naive(count, data_dir):
    process = manage(data_dir, "shell", "-c", "pass")  # warm the import cache
    process.communicate()
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment["MULTIDS_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "bench.naive", str(count)],
        env=environment,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode:
        sys.exit(f"bench: naive loader failed: {result.stderr.strip()[-500:]}")
    return _count(data_dir / "orders.db", "orders"), float(result.stdout.strip())


def _count(path, table):
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    django.setup()  # the workload comes from core.sources, which needs the models
    from bench import postgres, workload

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=workload.SIZES["orders"])
    parser.add_argument("--naive-orders", type=int, default=10_000)
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip the PostgreSQL half (it needs the server of .ci/setup-postgres.sh)",
    )
    args = parser.parse_args()
    sizes = dict(workload.SIZES, orders=args.orders)
    print(f"building workload {sizes} ...", flush=True)
    workload_dir = workload.build(OUT / "workload", sizes)
    total = sum(sizes.values())

    ref_rows, ref_seconds = reference(workload_dir, fresh_databases("reference"))
    if ref_rows != total:
        sys.exit(f"bench: the reference stored {ref_rows} rows, expected {total}")
    ref_rate = ref_rows / ref_seconds
    from django.conf import settings

    cache_mb = settings.SQLITE_WRITER_CACHE_MB
    tuned_rows, tuned_seconds = reference(workload_dir, fresh_databases("tuned"), cache_mb)
    tuned_rate = tuned_rows / tuned_seconds

    stored, seconds, memory, _out = insert_data(workload_dir, fresh_databases("insert_data"))
    if stored != total:
        sys.exit(f"bench: insert_data stored {stored} rows, expected {total}")
    rate = stored / seconds

    naive_rows, naive_seconds = naive(args.naive_orders, fresh_databases("naive"))
    naive_rate = naive_rows / naive_seconds

    lines = [
        "| approach | rows | seconds | rows/s | ratio to reference | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| plain sqlite3 executemany, no validation (reference) | {ref_rows:,} | "
        f"{ref_seconds:.2f} | {ref_rate:,.0f} | 1.00 | |",
        f"| the same with `cache_size` {cache_mb} MB, as insert_data's writers | {tuned_rows:,} | "
        f"{tuned_seconds:.2f} | {tuned_rate:,.0f} | {tuned_rate / ref_rate:.2f} | |",
        f"| `insert_data --from` (validated, whole process) | {stored:,} | {seconds:.2f} | "
        f"{rate:,.0f} | {rate / ref_rate:.2f} | {memory.peak_total / 2**20:,.0f} MB in all, "
        f"{memory.peak_single / 2**20:,.0f} MB largest process |",
        f"| naive thread pool, `objects.create()` per row | {naive_rows:,} | "
        f"{naive_seconds:.2f} | {naive_rate:,.0f} | {naive_rate / ref_rate:.3f} | |",
    ]
    print("\n".join(lines), flush=True)
    if args.no_postgres:
        return
    try:
        figures = postgres.run_postgres_bench(workload_dir)
    except (postgres.BenchError, postgres.psycopg.Error) as exc:
        sys.exit(
            f"bench: PostgreSQL not measured: {str(exc).strip().splitlines()[0]} "
            "(make bench ARGS=--no-postgres measures SQLite only)"
        )
    print("\n".join(postgres.table_rows(figures, prefix="PostgreSQL: ")))


if __name__ == "__main__":
    main()
