"""The plain-code references of ``make bench``, each run as its own process so that it is
timed and measured (peak PSS) exactly like insert_data.

    python -m bench.references sqlite-floor WORKLOAD_DIR DATA_DIR SCHEMA_DIR
    python -m bench.references sqlite-today WORKLOAD_DIR DATA_DIR
    python -m bench.references pg-floor WORKLOAD_DIR PLAN_JSON
    python -m bench.references pg-today WORKLOAD_DIR PLAN_JSON

The floor is the workload stored with the real schema's indexes as cheaply as plain code
can: bare tables (SQLite: rowid primary keys), one transaction per table, no validation,
and the indexes built after the rows are in. "Today" is plain code into the migrated
schema, indexes in place: the reference make bench used before.

The index definitions are read from a migrated database (SCHEMA_DIR, or PLAN_JSON written
by bench.postgres), so the floor always has the same indexes as the real schema.
"""

import csv
import json
import sqlite3
import sys
import threading
from pathlib import Path

TABLES = ("users", "products", "orders")
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")
CACHE_MB = 64  # what insert_data's writers use (settings.SQLITE_WRITER_CACHE_MB)


def _rows(workload_dir, table):
    handle = open(Path(workload_dir) / f"{table}.csv", newline="", encoding="utf-8")  # noqa: SIM115
    reader = csv.reader(handle)
    return next(reader), reader, handle


def _sqlite_connect(path):
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.execute(f"PRAGMA cache_size=-{CACHE_MB * 1024}")
    return db


def sqlite_schema(schema_dir, table):
    """(column types, CREATE INDEX statements) of table in a migrated SQLite file."""
    with sqlite3.connect(Path(schema_dir) / f"{table}.db") as db:
        types = {name: kind for _cid, name, kind, *_ in db.execute(f"PRAGMA table_info({table})")}
        indexes = [
            sql
            for (sql,) in db.execute(
                "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name=? "
                "AND sql IS NOT NULL",
                (table,),
            )
        ]
    return types, indexes


def sqlite_floor(workload_dir, data_dir, schema_dir):
    """Bare rowid tables, one executemany and one transaction per table, then the indexes."""
    for table in TABLES:
        types, indexes = sqlite_schema(schema_dir, table)
        header, reader, handle = _rows(workload_dir, table)
        columns = ", ".join(
            "id INTEGER PRIMARY KEY" if name == "id" else f'"{name}" {types[name]}'
            for name in header
        )
        db = _sqlite_connect(Path(data_dir) / f"{table}.db")
        db.execute(f"CREATE TABLE {table} ({columns})")
        db.execute("BEGIN")
        db.executemany(
            f"INSERT INTO {table} ({', '.join(header)}) VALUES ({', '.join('?' * len(header))})",
            reader,
        )
        for statement in indexes:
            db.execute(statement)
        db.execute("COMMIT")
        db.close()
        handle.close()


def sqlite_today(workload_dir, data_dir):
    """Plain sqlite3 executemany into the migrated schema (indexes in place)."""
    for table in TABLES:
        header, reader, handle = _rows(workload_dir, table)
        db = _sqlite_connect(Path(data_dir) / f"{table}.db")
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            f"INSERT INTO {table} ({', '.join(header)}) VALUES ({', '.join('?' * len(header))})",
            reader,
        )
        db.execute("COMMIT")
        db.close()
        handle.close()


def _copy_file(psycopg, url, workload_dir, table):
    from psycopg import sql

    path = Path(workload_dir) / f"{table}.csv"
    with open(path, "rb") as handle, psycopg.connect(url) as db:
        header = handle.readline().decode().strip().split(",")
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, header))
        )
        with db.cursor() as cursor, cursor.copy(statement) as copy:
            while block := handle.read(1 << 20):
                copy.write(block)


def pg_today(workload_dir, plan):
    """Each CSV COPYed into its migrated table (indexes and constraints in place)."""
    import psycopg

    for table in TABLES:
        _copy_file(psycopg, plan["urls"][table], workload_dir, table)


def pg_floor(workload_dir, plan):
    """COPY into bare tables, then every index of the real schema, one connection each, at
    once (as pg_restore -j does), with maintenance_work_mem raised for the build."""
    import psycopg

    for table in TABLES:
        _copy_file(psycopg, plan["urls"][table], workload_dir, table)
    errors = []

    def build(url, statements):
        try:
            with psycopg.connect(url) as db:
                db.execute(f"SET maintenance_work_mem = '{plan['maintenance_work_mem']}'")
                for statement in statements:
                    db.execute(statement)
        except psycopg.Error as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=build, args=(plan["urls"][table], statements))
        for table in TABLES
        for statements in plan["builds"][table]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def main(argv):
    kind, workload_dir, *rest = argv
    if kind == "sqlite-floor":
        sqlite_floor(workload_dir, *rest)
    elif kind == "sqlite-today":
        sqlite_today(workload_dir, *rest)
    else:
        plan = json.loads(Path(rest[0]).read_text())
        {"pg-floor": pg_floor, "pg-today": pg_today}[kind](workload_dir, plan)


if __name__ == "__main__":
    main(sys.argv[1:])
