"""The plain-code references of ``make bench``, each run as its own process so that it is
timed and measured (peak PSS) exactly like insert_data.

    python -m bench.references sqlite-floor WORKLOAD_DIR DATA_DIR SCHEMA_DIR
    python -m bench.references sqlite-today WORKLOAD_DIR DATA_DIR
    python -m bench.references pg-floor WORKLOAD_DIR PLAN_JSON
    python -m bench.references pg-today WORKLOAD_DIR PLAN_JSON
    python -m bench.references sqlite-join WORKLOAD_DIR DATA_DIR
    python -m bench.references pg-join WORKLOAD_DIR PLAN_JSON

The floor is the workload stored with the real schema's indexes as cheaply as plain code
can: bare tables (SQLite: rowid primary keys), one transaction per table, no validation,
and the indexes built after the rows are in. "Today" is plain code into the migrated
schema, indexes in place: the reference make bench used before, and for new orders into
a table already holding orders, the append row's. "Join" is a re-run's plain-code floor:
each file into a temporary table, and one join that finds the rows that are new or
changed against the stored ones (it prints how many of each, as JSON).

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


def _present(workload_dir):
    """The tables whose CSV file workload_dir holds, in load order (a directory of new
    orders holds orders.csv alone)."""
    return [t for t in TABLES if (Path(workload_dir) / f"{t}.csv").exists()]


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
    """Plain sqlite3 executemany into the migrated schema (indexes in place), of every file
    workload_dir holds: also the append row's reference, new orders into a stored table."""
    for table in _present(workload_dir):
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
    with psycopg.connect(url) as db:
        _copy_into(db, workload_dir, table, table)


def _copy_into(db, workload_dir, table, target):
    """COPY table's CSV file into the table target on db; return the file's header."""
    from psycopg import sql

    path = Path(workload_dir) / f"{table}.csv"
    with open(path, "rb") as handle:
        header = handle.readline().decode().strip().split(",")
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, header))
        )
        with db.cursor() as cursor, cursor.copy(statement) as copy:
            while block := handle.read(1 << 20):
                copy.write(block)
    return header


def _found_query(table, header, differ):
    """The join: each incoming row whose id is not stored (new) or is stored with other
    values (changed), with a last column saying which; differ is the backend's spelling of
    a null-safe "not the same"."""
    others = [name for name in header if name != "id"]
    incoming = ", ".join(f'i."{name}"' for name in others)
    stored = ", ".join(f't."{name}"' for name in others)
    return (
        f'SELECT i.*, t.id IS NULL FROM incoming AS i LEFT JOIN "{table}" AS t ON t.id = i.id '
        f"WHERE t.id IS NULL OR ({incoming}) {differ} ({stored})"
    )


def _tally(found, totals):
    """Read every row the join found (as plain code would, to report or write them)."""
    for *_row, new in found:
        totals["new" if new else "changed"] += 1


def sqlite_join(workload_dir, data_dir):
    """Each file executemany'd into a temporary table beside its stored table, then the
    join, read to the end: what plain code does to learn what a re-run would change."""
    totals = {"new": 0, "changed": 0}
    for table in _present(workload_dir):
        header, reader, handle = _rows(workload_dir, table)
        db = _sqlite_connect(Path(data_dir) / f"{table}.db")
        db.execute(f'CREATE TEMP TABLE incoming AS SELECT * FROM "{table}" WHERE 0')
        db.execute("BEGIN")
        db.executemany(
            f"INSERT INTO incoming ({', '.join(header)}) VALUES ({', '.join('?' * len(header))})",
            reader,
        )
        db.execute("COMMIT")
        _tally(db.execute(_found_query(table, header, "IS NOT")), totals)
        db.close()
        handle.close()
    print(json.dumps(totals))


def pg_join(workload_dir, plan):
    """Each file COPYed into a temporary table in its table's database, then the join,
    streamed to the client through a server-side cursor."""
    import psycopg

    totals = {"new": 0, "changed": 0}
    for table in _present(workload_dir):
        with psycopg.connect(plan["urls"][table]) as db:
            db.execute(f'CREATE TEMP TABLE incoming (LIKE "{table}")')
            header = _copy_into(db, workload_dir, table, "incoming")
            with db.cursor(name="found") as cursor:
                cursor.itersize = 10_000
                cursor.execute(_found_query(table, header, "IS DISTINCT FROM"))
                _tally(cursor, totals)
    print(json.dumps(totals))


def pg_today(workload_dir, plan):
    """Each CSV COPYed into its migrated table (indexes and constraints in place), of every
    file workload_dir holds: also the append row's reference."""
    import psycopg

    for table in _present(workload_dir):
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
    elif kind == "sqlite-join":
        sqlite_join(workload_dir, *rest)
    else:
        plan = json.loads(Path(rest[0]).read_text())
        {"pg-floor": pg_floor, "pg-today": pg_today, "pg-join": pg_join}[kind](workload_dir, plan)


if __name__ == "__main__":
    main(sys.argv[1:])
