"""The PostgreSQL half of the benchmark: the floor, today's reference and insert_data.

    python -m bench.postgres WORKLOAD_DIR      (users.csv, products.csv, orders.csv)

``run_postgres_bench`` creates fresh databases on the server named by
``MULTIDS_POSTGRES_ADMIN_URL`` (default ``postgresql://multids@127.0.0.1:5432/postgres``,
the role ``.ci/setup-postgres.sh`` creates), one per table as if each lived on its own
server, migrates them (not measured), then measures, each as one whole process:

* the floor: the migrated tables made bare (``bare_plan``: constraints and indexes dropped,
  their definitions kept), each CSV COPYed in, then every index of the real schema built,
  one connection per index, at once (``bench.references.pg_floor``);
* today's reference: each CSV COPYed into its migrated table, indexes in place;
* ``manage.py insert_data --from DIR`` (the CSV files, then the same rows as JSONL) and the
  synthetic source of the same size, with ``USERS_DATABASE_URL``, ``ORDERS_DATABASE_URL``
  and ``PRODUCTS_DATABASE_URL`` pointing at fresh databases;
* pgloader (when installed) loading the same CSV files into the migrated tables, their
  CHECK constraints dropped, ``WITH drop indexes``: the peer loader, beside insert_data;
* over a finished load: the orders alone, a re-run (all present), a conflicting re-run
  (every row changed), each with its plain-code join (``bench.references``), new orders
  appended with their plain COPY, and the resume of a load killed at half
  (``bench.resume``).

Each is counted from its databases afterwards, which are dropped at the end. The server's
CPU (its backends for those databases, from /proc) is reported beside the client's.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from bench import measure
from bench.resume import GONE_WITHIN, POLL, CleanState, kill_at_half

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://multids@127.0.0.1:5432/postgres"
MAINTENANCE_WORK_MEM = "256MB"  # for the floor's index builds, as crossdb.loading.indexes uses
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


def bare_plan(databases, path):
    """Make the migrated tables bare (no constraint, no index) and write, to path, the
    statements that give them the real schema's indexes back: the floor's plan."""
    builds = {}
    for table in TABLES:
        with psycopg.connect(database_url(databases.names[table]), autocommit=True) as db:
            indexes = db.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)
            ).fetchall()
            constraints = db.execute(
                "SELECT conname, contype FROM pg_constraint "
                "WHERE conrelid = %s::regclass ORDER BY contype",
                (table,),
            ).fetchall()
            primary = {name for name, kind in constraints if kind == "p"}
            for name, _kind in constraints:
                db.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(table), sql.Identifier(name)
                    )
                )
            for name, _definition in indexes:
                db.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        builds[table] = [
            [definition]
            + (
                [f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" PRIMARY KEY USING INDEX "{name}"']
                if name in primary
                else []
            )
            for name, definition in indexes
        ]
    plan = {
        "urls": {t: database_url(databases.names[t]) for t in TABLES},
        "builds": builds,
        "maintenance_work_mem": MAINTENANCE_WORK_MEM,
    }
    Path(path).write_text(json.dumps(plan))
    return path


# Whether a session other than this one is writing table, or has written it: its ROW
# EXCLUSIVE lock (a COPY or an INSERT under way), or rows inserted in the statistics.
WRITING = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND relation = to_regclass(%(table)s) AND mode = 'RowExclusiveLock'
      AND pid <> pg_backend_pid()
) OR pg_stat_get_tuples_inserted(to_regclass(%(table)s)) > 0
"""


class CommittedRows:
    """The rows committed in the three databases, counted from outside while a load runs
    (bench.resume polls it to kill the load at half).

    A count holds a share lock on its table while it runs, and the orders writer opens a
    load segment only if it gets the empty table's exclusive lock without waiting
    (crossdb.loading.segment): a count at that moment would make the killed load another
    than the one users run. So a table is counted only once its writer has begun writing it
    (WRITING), when the segment is settled; until then it holds no committed row. A count
    of a table inside a segment waits for its commit, when its rows are committed."""

    def __init__(self, databases):
        self.databases = databases
        self.connections = {}
        self.written = set()

    def __enter__(self):
        for table in TABLES:
            url = database_url(self.databases.names[table])
            self.connections[table] = psycopg.connect(url, autocommit=True)
        return self

    def __exit__(self, *exc):
        for db in self.connections.values():
            db.close()

    def __call__(self):
        total = 0
        for table, db in self.connections.items():
            if table not in self.written:
                if not db.execute(WRITING, {"table": table}).fetchone()[0]:
                    continue
                self.written.add(table)
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            total += db.execute(query).fetchone()[0]
        return total


def wait_for_backends(databases):
    """Wait until the server runs no session on databases (a killed client's backend ends
    when it notices, after an index build under way, say); BenchError after GONE_WITHIN."""
    names = list(databases.names.values())
    deadline = time.monotonic() + GONE_WITHIN
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)"
        while admin.execute(query, (names,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise BenchError(f"the killed load's sessions still run after {GONE_WITHIN} s")
            time.sleep(POLL)


def state_digest(databases):
    """The state a run leaves: each table's index definitions and every row, by id, as the
    server writes them (COPY text), hashed as they are read."""
    digest = hashlib.sha256()
    for table in TABLES:
        with psycopg.connect(database_url(databases.names[table])) as db:
            indexes = db.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
                "ORDER BY indexname",
                (table,),
            ).fetchall()
            digest.update(repr((table, indexes)).encode())
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT").format(
                sql.Identifier(table)
            )
            with db.cursor() as cursor, cursor.copy(query) as copy:
                for block in copy:
                    digest.update(block)
    return digest.hexdigest()


PGLOADER = "pgloader"
# One LOAD command per file (pgloader's CSV source), as its manual writes them: the file's
# header fields into the same columns, the table's indexes dropped and built again after.
PGLOADER_LOAD = """LOAD CSV
     FROM '{path}' ({columns})
     INTO {url} ({columns})
     WITH skip header = 1, fields optionally enclosed by '"', fields terminated by ',',
          drop indexes;
"""


def pgloader_missing():
    """One line saying how to install pgloader, or None when it is on PATH."""
    if shutil.which(PGLOADER):
        return None
    return (
        "bench: pgloader is not installed, so its PostgreSQL row is left out "
        "(Debian and Ubuntu: sudo apt-get install pgloader)"
    )


def pgloader_plan(workload_dir, databases, path):
    """Make the migrated tables bare but for their indexes (their CHECK constraints
    dropped, as tables made for pgloader would be), and write, to path, the command file
    that loads each CSV file into its table."""
    commands = []
    for table in TABLES:
        name = databases.names[table]
        with psycopg.connect(database_url(name), autocommit=True) as db:
            constraints = db.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                (table,),
            ).fetchall()
            for (check,) in constraints:
                db.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(table), sql.Identifier(check)
                    )
                )
        csv_path = Path(workload_dir).resolve() / f"{table}.csv"
        with open(csv_path, encoding="utf-8") as handle:
            columns = ", ".join(handle.readline().strip().split(","))
        url = urlsplit(database_url(name))._replace(query=f"tablename={table}").geturl()
        commands.append(PGLOADER_LOAD.format(path=csv_path, columns=columns, url=url))
    Path(path).write_text("\n".join(commands))
    return path


def _tag(databases):
    return databases.names["orders"].rsplit("_", 1)[0]  # multids_bench_<label>_<random>


def _reference(kind, workload_dir, databases, plan_path):
    plan_path = Path(plan_path)
    if not plan_path.exists():
        plan_path.write_text(
            json.dumps({"urls": {t: database_url(databases.names[t]) for t in TABLES}})
        )
    return measure.run(
        ["-m", "bench.references", kind, str(workload_dir), str(plan_path)],
        label=f"the {kind} reference",
        server_tag=_tag(databases),
    )


def _steps(workload_dir, sizes, pgloader=True):
    """(kind, label, options for on_row) of every PostgreSQL row, in the order they run
    (pgloader: whether its row, beside insert_data's CSV, is among them)."""
    from bench.workload import by_level, rows_in

    appended = {"timed": sizes["orders"], "expected": sum(sizes.values()) + sizes["orders"]}
    peer = (
        "pgloader",
        "pgloader CSV into bare tables with the same indexes (`WITH drop indexes`)",
        {},
    )
    return [
        ("floor", "COPY into bare tables, then the indexes, one connection each (floor)", {}),
        ("today", "plain COPY into the migrated schema (today's reference)", {}),
        ("from", "`insert_data --from` CSV (today's loader)", {"key": "from"}),
        *([peer] if pgloader else []),
        ("jsonl", "`insert_data --from` JSONL (today's loader)", {}),
        ("synthetic", "`insert_data` synthetic (today's loader)", {}),
        ("after", measure.AFTER_PARENTS, {"timed": rows_in(by_level(workload_dir)[1])}),
        ("join", f"plain COPY, {measure.JOIN} (reference of the row below)", {"key": "join"}),
        ("rerun", measure.RERUN + measure.TO_ABOVE, {"against": "join"}),
        (
            "join_conflict",
            f"plain COPY, {measure.JOIN}, every row changed (reference of the row below)",
            {"key": "join_conflict"},
        ),
        ("conflict", measure.CONFLICT + measure.TO_ABOVE, {"against": "join_conflict"}),
        (
            "append_copy",
            "plain COPY of the new orders into the indexed table (reference of the row below)",
            appended | {"key": "append"},
        ),
        ("append", measure.APPEND + measure.TO_ABOVE, appended | {"against": "append"}),
        ("resume", measure.RESUME, {"share_of": "from"}),
    ]


def run_postgres_bench(workload_dir, sizes, scratch, on_row, repeat=1):
    """Measure the floor, today's reference and insert_data (file and synthetic, fresh and
    over a finished load) on PostgreSQL, repeat times each, in turn (sizes: the workload's
    rows per table, for the synthetic load of the same size); on_row(label, kind, median
    Measured, rows stored, **options) per row at the end, kind "floor" first.

    Raises BenchError (one line) when the server is unreachable or a count is wrong.
    """
    expected = expected_rows(workload_dir)
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    missing = pgloader_missing()
    if missing:
        print(missing, flush=True)
    steps = _steps(workload_dir, sizes, pgloader=not missing)
    state = CleanState(expected)
    runs = {kind: [] for kind, _label, _options in steps}
    for round_ in range(1, repeat + 1):
        measure.say_round("PostgreSQL", round_, repeat)
        for kind, label, options in steps:
            wanted = options.get("expected", expected)
            runs[kind].append(
                _measure_once(kind, label, workload_dir, sizes, scratch, wanted, state)
            )
    for kind, label, options in steps:
        on_row(
            label.format(committed=state.label()) if kind == "resume" else label,
            "floor" if kind == "floor" else "",
            measure.median(runs[kind]),
            options.get("expected", expected),
            **options,
        )


# What each kind finds stored before it is measured (loaded by insert_data, not measured).
STORED_BEFORE = {
    "after": "parents",
    "join": "all",
    "rerun": "all",
    "join_conflict": "all",
    "conflict": "all",
    "append_copy": "all",
    "append": "all",
}


def _measure_once(kind, label, workload_dir, sizes, scratch, expected, state):
    """One run of one approach into fresh databases; BenchError if it stored a wrong count
    or did not meet what it was built to meet (bench.checks, and for the fresh load, the
    re-runs, the resume and pgloader, the state a clean run leaves: resume.CleanState)."""
    with FreshDatabases(kind) as databases:
        _store_before(kind, workload_dir, databases)
        if kind == "resume":
            _kill_at_half(workload_dir, sizes, databases, state)
        if kind == "floor":
            plan = bare_plan(databases, scratch / "floor-plan.json")
            measured = _reference("pg-floor", workload_dir, databases, plan)
        elif kind == "pgloader":
            plan = pgloader_plan(workload_dir, databases, scratch / "pgloader.load")
            measured = measure.run_command(
                [PGLOADER, "--root-dir", str(scratch / "pgloader"), str(plan)],
                label="pgloader",
                server_tag=_tag(databases),
            )
        elif kind in ("today", "append_copy", "join", "join_conflict"):
            source = _source(kind, workload_dir, sizes)
            plan = scratch / f"{kind}-plan-{uuid.uuid4().hex[:6]}.json"
            reference = "pg-join" if kind.startswith("join") else "pg-today"
            measured = _reference(reference, source, databases, plan)
        else:
            measured = measure.manage(
                *_insert_data_args(kind, workload_dir, sizes),
                env=databases.env,
                label="insert_data on PostgreSQL",
                server_tag=_tag(databases),
            )
        _check(kind, measured, expected, sizes)
        if kind == "from":
            state.remember_clean(state_digest(databases))
        elif kind in ("rerun", "conflict", "resume", "pgloader"):
            state.same_as_clean(state_digest(databases), f"the PostgreSQL {kind} row")
        stored = databases.count()
    if stored != expected:
        raise BenchError(f"{label} stored {stored:,} rows on PostgreSQL, expected {expected:,}")
    return measured


def _kill_at_half(workload_dir, sizes, databases, state):
    """The fresh load, SIGKILLed once half the workload's rows are committed (not measured);
    the rows committed once its sessions have ended go to state."""
    with CommittedRows(databases) as committed:
        kill_at_half(
            _insert_data_args("from", workload_dir, sizes),
            databases.env,
            committed,
            state.total,
        )
    wait_for_backends(databases)
    state.killed.append(databases.count())


def _source(kind, workload_dir, sizes):
    """The files a kind reads: the workload's; for a conflicting re-run the same ids with
    every row's data changed (bench.workload.conflicting); for an append, new orders
    (bench.workload.appended)."""
    from bench.workload import appended, conflicting

    if "conflict" in kind:
        return conflicting(workload_dir)
    if kind.startswith("append"):
        return appended(workload_dir, sizes)
    return workload_dir


def _store_before(kind, workload_dir, databases):
    from bench.workload import by_level

    before = STORED_BEFORE.get(kind)
    if before is None:
        return
    first = by_level(workload_dir)[0] if before == "parents" else workload_dir
    loaded = _manage("insert_data", "--from", str(first), env=databases.env)
    if loaded.returncode:
        raise BenchError(f"loading {first} failed: {loaded.stderr.strip()}")


def _check(kind, measured, expected, sizes):
    """The re-runs and the append met what they were built to meet (bench.checks)."""
    from bench import checks

    if kind == "join":
        checks.found(measured, "the PostgreSQL join")
    elif kind == "join_conflict":
        checks.found(measured, "the PostgreSQL join", changed=expected)
    elif kind == "rerun":
        checks.verdicts(measured, "the PostgreSQL re-run", present=expected)
    elif kind == "conflict":
        checks.verdicts(measured, "the conflicting PostgreSQL re-run", rejected=expected)
    elif kind == "append":
        checks.verdicts(measured, "the PostgreSQL append", stored=sizes["orders"])


def _insert_data_args(kind, workload_dir, sizes):
    from bench.workload import as_jsonl, by_level

    if kind in ("from", "rerun", "conflict", "append", "resume"):
        source = _source(kind, workload_dir, sizes)
        return ("insert_data", "--from", str(source), "--no-progress")
    if kind == "after":  # the orders alone (bench.workload.by_level)
        return ("insert_data", "--from", str(by_level(workload_dir)[1]), "--no-progress")
    if kind == "jsonl":  # the same rows as JSONL files (bench.workload.as_jsonl)
        return ("insert_data", "--from", str(as_jsonl(workload_dir)), "--no-progress")
    return (
        "insert_data",
        "--users",
        str(sizes["users"]),
        "--products",
        str(sizes["products"]),
        "--orders",
        str(sizes["orders"]),
        "--no-progress",
    )


def expected_rows(workload_dir):
    total = 0
    for table in TABLES:
        with open(Path(workload_dir) / f"{table}.csv", "rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m bench.postgres WORKLOAD_DIR")
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    django.setup()  # bench.workload reads the models
    from bench.workload import sizes_in

    sizes = sizes_in(args[0])
    rows = measure.Table(sum(sizes.values()))
    try:
        run_postgres_bench(args[0], sizes, measure.OUT / "postgres", rows.add)
    except (BenchError, measure.BenchFailed, OSError, psycopg.Error) as exc:
        sys.exit(f"bench.postgres: {str(exc).strip().splitlines()[0]}")


if __name__ == "__main__":
    main()
