"""Racing real processes against the reference guard: where the databases live, how the
processes are started and killed, the workers of the concurrency checker and its oracle.

Used two ways:

* imported by ``tests/test_races.py`` and ``tests/test_checker.py`` (the harness: ``Backend``,
  ``Processes``, ``judge``);
* run as ``python -m tests.concurrency worker|observer ...`` in the processes those tests
  start (with ``DJANGO_SETTINGS_MODULE=tests.settings`` and ``MULTIDS_TEST_DATA_DIR``, so
  every process sees the fourth table, ``reviews``, and the same files or servers).

Each worker appends one JSON line per operation to its own log: a ``begin`` line before it
touches a database and an ``end`` line with the outcome (``ack``, ``refused`` with the
reason, ``noop``, ``failed`` with the error). An operation with a ``begin`` and no ``end``
was killed (the controller logs the moment of each kill). The oracle (``judge``) reads only
these logs, the observer's log and the final rows, so what it proves does not depend on
the code under test reporting on itself.
"""

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = {
    "default": "DATABASE_URL",
    "users_db": "USERS_DATABASE_URL",
    "orders_db": "ORDERS_DATABASE_URL",
    "products_db": "PRODUCTS_DATABASE_URL",
    "reviews_db": "REVIEWS_DATABASE_URL",
}
FILES = {alias: alias.removesuffix("_db") + ".db" for alias in VARIABLES}
FILES["default"] = "default.db"
TABLE_ALIAS = {"users": "users_db", "products": "products_db", "orders": "orders_db"}
TABLE_ALIAS["reviews"] = "reviews_db"
CHILD_COLUMNS = {"orders": ("user_id", "product_id"), "reviews": ("user_id", "product_id")}


# --- where one test's databases live -------------------------------------------------------


@dataclass
class Backend:
    """Fresh databases for one test: SQLite files in data_dir, or PostgreSQL databases."""

    name: str  # "sqlite" or "postgresql"
    data_dir: Path
    settings: str = "multids.settings"
    urls: dict = field(default_factory=dict)  # environment variable -> URL (PostgreSQL)

    @property
    def aliases(self):
        if self.settings == "multids.settings":
            return [a for a in VARIABLES if a != "reviews_db"]
        return list(VARIABLES)

    @property
    def tables(self):
        return [t for t, a in TABLE_ALIAS.items() if a in self.aliases]

    def env(self, *, guard=True, **extra):
        """The environment of a process that works on these databases."""
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.endswith("DATABASE_URL")
            and k not in ("MULTIDS_TEST_NO_GUARD", "MULTIDS_DATA_DIR", "MULTIDS_TEST_DATA_DIR")
        }
        environment |= self.urls | {
            "DJANGO_SETTINGS_MODULE": self.settings,
            "MULTIDS_DATA_DIR": str(self.data_dir),
            "MULTIDS_TEST_DATA_DIR": str(self.data_dir),
            "PYTHONPATH": str(ROOT),
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
            # "testserver" is not local, which means production (HTTPS only) unless told:
            # the test client speaks plain HTTP.
            "MULTIDS_PRODUCTION": "0",
            # Django's test client is "testserver", not a local host: a key of its own
            "DJANGO_SECRET_KEY": "multids-concurrency-tests-" + "k" * 40,
        }
        if not guard:
            environment["MULTIDS_TEST_NO_GUARD"] = "1"
        return environment | {k: str(v) for k, v in extra.items()}

    def manage(self, *args, guard=True, timeout=300, check=False):
        done = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "launch.py"), *args],
            env=self.env(guard=guard),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    def migrate(self):
        self.manage("migrate_all", check=True)

    def check_integrity(self):
        """Run check_integrity as a user would; return (exit status, its JSON report)."""
        report = self.data_dir / f"integrity-{uuid.uuid4().hex[:6]}.json"
        done = self.manage("check_integrity", "--json", str(report), "--show", "5")
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        return done.returncode, json.loads(report.read_text())

    def query(self, table, columns="id"):
        """Every row of table (the given columns), read beside Django, by id."""
        alias = TABLE_ALIAS[table]
        sql = f"SELECT {columns} FROM {table} ORDER BY id"
        if self.name == "sqlite":
            with sqlite3.connect(self.data_dir / FILES[alias], timeout=60) as db:
                return db.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.urls[VARIABLES[alias]]) as db:
            return db.execute(sql).fetchall()

    def ids(self, table):
        return {row[0] for row in self.query(table)}

    def count(self, table):
        alias = TABLE_ALIAS[table]
        sql = f"SELECT count(*) FROM {table}"
        if self.name == "sqlite":
            with sqlite3.connect(self.data_dir / FILES[alias], timeout=60) as db:
                return db.execute(sql).fetchone()[0]
        import psycopg

        with psycopg.connect(self.urls[VARIABLES[alias]]) as db:
            return db.execute(sql).fetchone()[0]


class PostgresDatabases:
    """Creates fresh databases on the server (one per alias) and drops them all at the end."""

    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.created = []

    def make(self, aliases):
        import psycopg
        from psycopg import sql

        tag = uuid.uuid4().hex[:8]
        urls = {}
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            for alias in aliases:
                name = f"multids_test_{tag}_{alias}"
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                self.created.append(name)
                urls[VARIABLES[alias]] = urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()
        return urls

    def drop_all(self):
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            for name in self.created:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def make_backend(name, tmp_path, settings, postgres=None):
    """A migrated Backend; postgres is a PostgresDatabases when name is "postgresql"."""
    data_dir = tmp_path / f"data-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    backend = Backend(name, data_dir, settings)
    if name == "postgresql":
        backend.urls = postgres.make(backend.aliases)
    backend.migrate()
    return backend


@contextlib.contextmanager
def migrated_backend(request, tmp_path, settings):
    """make_backend for a fixture whose parameter names the backend; PostgreSQL's
    databases (on the ``postgres_server`` fixture's server) are dropped afterwards."""
    postgres = None
    if request.param == "postgresql":
        postgres = PostgresDatabases(request.getfixturevalue("postgres_server"))
    try:
        yield make_backend(request.param, tmp_path, settings, postgres)
    finally:
        if postgres:
            postgres.drop_all()


# --- processes -----------------------------------------------------------------------------


class Processes:
    """Starts processes in their own process groups; kills every group still alive on exit."""

    def __init__(self):
        self.started = []

    def start(self, args, env, **popen):
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(
            args, env=env, cwd=ROOT, start_new_session=True, text=True, **popen
        )
        self.started.append(process)
        return process

    def python(self, backend, *args, guard=True, env=None, **popen):
        """``python -m tests.concurrency ARGS`` against backend."""
        env = backend.env(guard=guard, **(env or {}))
        return self.start([sys.executable, "-m", "tests.concurrency", *args], env, **popen)

    def manage(self, backend, *args, guard=True, env=None, **popen):
        env = backend.env(guard=guard, **(env or {}))
        return self.start([sys.executable, str(ROOT / "tests" / "launch.py"), *args], env, **popen)

    @staticmethod
    def kill(process):
        """SIGKILL process and everything it started (its writer processes)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in self.started:
            if process.poll() is None:
                self.kill(process)
            else:  # the leader exited; a writer it forked may not have
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for pipe in (process.stdout, process.stderr):
                if pipe:
                    pipe.close()


def wait_until(predicate, timeout, interval=0.01):
    """Poll predicate until true or timeout seconds passed; return whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# --- the universe of rows the checker's loads draw from -----------------------------------

# Every row has one content, decided by its id, so two loads of the same id agree ("already
# present") and an order or review names a parent decided by its id too.
USERS, PRODUCTS, ORDERS, REVIEWS = 300, 40, 6000, 1500


def user_row(i):
    return (str(i), f"User {i}", f"user{i}@example.com")


def product_row(i):
    return (str(i), f"Product {i}", f"{1 + i % 97}.{i % 100:02d}")


def order_row(i):
    return (str(i), str(1 + (i * 7919) % USERS), str(1 + (i * 104729) % PRODUCTS), str(1 + i % 5))


def review_row(i):
    return (str(i), str(1 + (i * 6151) % USERS), str(1 + (i * 3571) % PRODUCTS), str(1 + i % 5))


ROW = {"users": user_row, "products": product_row, "orders": order_row, "reviews": review_row}


class WindowSource:
    """A load of id windows of the universe: {table: range of ids}, streamed like a file."""

    def __init__(self, windows, label):
        self.windows = windows
        self.label = label

    def check(self):
        pass

    def tables(self):
        from crossdb import registry

        return [t for t in registry.tables() if t in self.windows]

    def rows(self, table):
        make = ROW[table]
        for line, i in enumerate(self.windows[table], start=2):
            yield line, make(i)


# --- the processes of the checker ----------------------------------------------------------


class Log:
    """One JSON line per event, appended with a single write so a kill never splits one."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.n = 0

    def write(self, **event):
        event.setdefault("t", time.time())
        os.write(self.fd, (json.dumps(event) + "\n").encode())

    def begin(self, op, **details):
        self.n += 1
        self.write(kind="begin", n=self.n, op=op, **details)
        return self.n

    def end(self, n, outcome, **details):
        self.write(kind="end", n=n, outcome=outcome, **details)


def _setup_django():
    import django

    from tests.launch import set_hooks

    django.setup()
    set_hooks()  # the harness's variables (MULTIDS_TEST_NO_GUARD, ...) set crossdb's hooks


def _refusal_types():
    from crossdb.deletion import HasChildren
    from crossdb.guard import MissingParent

    return (MissingParent, HasChildren)


def op_load(log, rng, worker):
    from crossdb.loading import load

    windows = {}
    start = rng.randrange(1, USERS)
    windows["users"] = range(start, min(USERS, start + rng.randrange(20, 200)) + 1)
    windows["products"] = range(1, PRODUCTS + 1)
    start = rng.randrange(1, ORDERS)
    windows["orders"] = range(start, min(ORDERS, start + rng.randrange(200, 2000)) + 1)
    if rng.random() < 0.6:
        start = rng.randrange(1, REVIEWS)
        windows["reviews"] = range(start, min(REVIEWS, start + rng.randrange(50, 500)) + 1)
    spans = {t: [w.start, w.stop] for t, w in windows.items()}
    n = log.begin("load", windows=spans)
    source = WindowSource(windows, f"checker worker {worker}")
    try:
        result = load.load(source, batch_size=rng.choice([50, 100, 250]))
    except load.LoadError as exc:
        log.end(n, "failed", error=str(exc))
        return
    rejected = [[r.table, r.id, r.reason] for r in result.rejections]
    log.end(n, "ack", rejected=rejected)


def op_create_child(log, rng, worker, ids):
    from crossdb.registry import spec

    table = rng.choice(["orders", "reviews"])
    model = spec(table).model
    pk = next(ids)
    user, product = rng.randint(1, USERS), rng.randint(1, PRODUCTS)
    via = rng.choice(["create", "save", "bulk_create"])
    n = log.begin("create", table=table, id=pk, user=user, product=product, via=via)
    other = {"quantity": 1} if table == "orders" else {"rating": 3}
    try:
        obj = model(id=pk, user_id=user, product_id=product, **other)
        if via == "create":
            model.objects.create(id=pk, user_id=user, product_id=product, **other)
        elif via == "save":
            obj.save()
        else:
            model.objects.bulk_create([obj])
    except _refusal_types() as exc:
        log.end(n, "refused", reason=str(exc), error_type=type(exc).__name__)
        return
    log.end(n, "ack")


def op_repoint_child(log, rng, worker, created):
    from crossdb.registry import spec

    table = rng.choice(["orders", "reviews"])
    model = spec(table).model
    limit = ORDERS if table == "orders" else REVIEWS
    pool = created.get(table) or []
    pk = rng.choice(pool) if pool and rng.random() < 0.3 else rng.randint(1, limit)
    user = rng.randint(1, USERS)
    via = rng.choice(["save", "update"])
    n = log.begin("repoint", table=table, id=pk, user=user, via=via)
    try:
        if via == "update":
            changed = model.objects.filter(pk=pk).update(user_id=user)
        else:
            obj = model.objects.filter(pk=pk).first()
            changed = 0
            if obj is not None:
                obj.user_id = user
                obj.save()
                changed = 1
    except _refusal_types() as exc:
        log.end(n, "refused", reason=str(exc), error_type=type(exc).__name__)
        return
    log.end(n, "ack" if changed else "noop")


def op_delete_parent(log, rng, worker):
    from crossdb import deletion

    table = "users" if rng.random() < 0.8 else "products"
    pk = rng.randint(1, USERS if table == "users" else PRODUCTS)
    cascade = rng.random() < 0.6
    via = rng.choice(["deletion", "queryset", "model"]) if not cascade else "deletion"
    n = log.begin("delete", table=table, id=pk, cascade=cascade, via=via)
    try:
        if via == "deletion":
            result = deletion.delete(table, [pk], with_children=cascade)
            parents = result.parents
        else:
            from crossdb.registry import spec

            model = spec(table).model
            if via == "queryset":
                _total, by_model = model.objects.filter(pk=pk).delete()
                parents = by_model.get(model._meta.label, 0)
            else:
                obj = model.objects.filter(pk=pk).first()
                parents = 0
                if obj is not None:
                    _total, by_model = obj.delete()
                    parents = by_model.get(model._meta.label, 0)
    except _refusal_types() as exc:
        log.end(n, "refused", reason=str(exc), error_type=type(exc).__name__)
        return
    log.end(n, "ack" if parents else "noop")


MIXES = {
    "loader": {"load": 1},
    "orm": {"create": 5, "repoint": 4, "delete": 1},
    "deleter": {"delete": 6, "create": 2, "repoint": 1},
}


def worker_main(args):
    _setup_django()
    import traceback

    from django.db import DatabaseError, close_old_connections

    log = Log(args.log)
    rng = random.Random(args.seed)
    ids = iter(range(args.id_base, args.id_base + 10_000_000))
    created = {}
    ops, weights = zip(*MIXES[args.role].items(), strict=True)
    log.write(kind="start", role=args.role, seed=args.seed, pid=os.getpid())
    deadline = time.time() + args.seconds
    count = 0
    while time.time() < deadline and count < args.max_ops:
        count += 1
        op = rng.choices(ops, weights)[0]
        try:
            if op == "load":
                op_load(log, rng, args.worker)
            elif op == "create":
                op_create_child(log, rng, args.worker, ids)
            elif op == "repoint":
                op_repoint_child(log, rng, args.worker, created)
            else:
                op_delete_parent(log, rng, args.worker)
        except DatabaseError as exc:  # logged, judged by the test: never expected
            log.write(kind="end", n=log.n, outcome="failed", error=f"{type(exc).__name__}: {exc}")
            close_old_connections()
        except Exception as exc:
            log.write(kind="end", n=log.n, outcome="error", error=traceback.format_exc()[-3000:])
            raise SystemExit(f"unexpected {type(exc).__name__}: {exc}") from exc
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.02))
    log.write(kind="stop", ops=count)


def observer_main(args):
    """check_integrity in a loop: every orphan it ever sees is logged."""
    _setup_django()
    from crossdb.integrity import check_integrity

    log = Log(args.log)
    deadline = time.time() + args.seconds
    while time.time() < deadline and not Path(args.stop).exists():
        started = time.time()
        result = check_integrity(batch_size=2000)
        log.write(
            kind="check",
            started=started,
            orphans=result.orphan_count,
            listed=[str(o) for o in result.orphans[:20]],
            rows=result.rows_checked,
            corrupt=result.corrupt,
            scan_error=result.scan_error,
        )
        time.sleep(0.05)


# --- the controller and the oracle ---------------------------------------------------------


@dataclass
class Run:
    """What one checker run left behind: the logs, the kills, the final check."""

    backend: Backend
    logs: list = field(default_factory=list)  # worker log paths
    kills: dict = field(default_factory=dict)  # log path -> kill time
    observer_log: Path | None = None
    final_status: int | None = None
    final_report: dict | None = None
    worker_errors: list = field(default_factory=list)  # stderr of workers that failed


def run_checker(
    backend,
    *,
    seconds,
    seed,
    guard=True,
    roles=("loader", "loader", "orm", "deleter"),
    kill_every=(1.0, 3.0),
    max_kills=50,
):
    """Run workers (roles) and an observer for about seconds, killing a random worker now and
    then and starting it again; return a Run for judge()."""
    rng = random.Random(seed)
    logs_dir = backend.data_dir / f"checker-{uuid.uuid4().hex[:6]}"
    logs_dir.mkdir()
    run = Run(backend, observer_log=logs_dir / "observer.jsonl")
    stop = logs_dir / "stop"
    deadline = time.time() + seconds
    generation = 0

    def start_worker(processes, slot, role):
        nonlocal generation
        generation += 1
        log = logs_dir / f"worker{slot}-{generation}.jsonl"
        run.logs.append(log)
        process = processes.python(
            backend,
            "worker",
            "--role",
            role,
            "--worker",
            str(slot),
            "--seed",
            str(rng.randrange(1 << 30)),
            "--log",
            str(log),
            "--seconds",
            f"{max(deadline - time.time(), 0.5):.2f}",
            "--id-base",
            str(1_000_000 * (1 + generation)),
            guard=guard,
            stdout=subprocess.DEVNULL,
        )
        return process, log

    with Processes() as processes:
        observer = processes.python(
            backend,
            "observer",
            "--log",
            str(run.observer_log),
            "--seconds",
            str(seconds + 120),
            "--stop",
            str(stop),
            stdout=subprocess.DEVNULL,
        )
        running = {
            slot: (role, *start_worker(processes, slot, role)) for slot, role in enumerate(roles)
        }
        while time.time() < deadline - 1 and len(run.kills) < max_kills:
            time.sleep(min(rng.uniform(*kill_every), max(deadline - time.time() - 1, 0)))
            if time.time() >= deadline - 1:
                break
            slot = rng.choice(sorted(running))
            role, process, log = running[slot]
            if process.poll() is None:
                processes.kill(process)
                run.kills[log] = time.time()
            _collect_errors(run, process)
            running[slot] = (role, *start_worker(processes, slot, role))
        for _role, process, _log in running.values():
            try:
                process.wait(timeout=max(deadline - time.time(), 0) + 90)
            except subprocess.TimeoutExpired:
                processes.kill(process)
                run.worker_errors.append(f"worker pid {process.pid} did not stop in time")
            _collect_errors(run, process)
        stop.touch()
        try:
            observer.wait(timeout=120)
        except subprocess.TimeoutExpired:
            processes.kill(observer)
        _collect_errors(run, observer)
    run.final_status, run.final_report = backend.check_integrity()
    return run


def _collect_errors(run, process):
    if process.returncode not in (0, -signal.SIGKILL, None):
        err = process.stderr.read() if process.stderr else ""
        run.worker_errors.append(f"exit {process.returncode}: {err[-2000:]}")


def read_log(path, kill_time):
    """Return the operations of one worker log: dicts with op, start, end, outcome, ..."""
    begins, ops = {}, []
    last_t = None
    for line in Path(path).read_text().splitlines():
        event = json.loads(line)
        last_t = event["t"]
        if event["kind"] == "begin":
            begins[event["n"]] = event
        elif event["kind"] == "end" and event["n"] in begins:
            begin = begins.pop(event["n"])
            ops.append(begin | event | {"start": begin["t"], "end": event["t"]})
    for begin in begins.values():  # begun and never ended: killed (or died) mid-operation
        end = kill_time if kill_time is not None else last_t
        ops.append(begin | {"outcome": "killed", "start": begin["t"], "end": end or begin["t"]})
    return ops


@dataclass
class Verdict:
    counts: dict
    violations: list

    def summary(self):
        c = self.counts
        return (
            f"{c['operations']} operations ({c['by_outcome']}), {c['kills']} kills, "
            f"{c['checks']} integrity checks, {c['orphans_observed']} orphans observed "
            f"(max {c['max_orphans']} in one check), final check "
            f"{'ok' if c['final_ok'] else 'NOT ok'} ({c['final_orphans']} orphans); "
            f"{c['rows_acknowledged']} acknowledged row writes, {c['deletes_acknowledged']} "
            f"acknowledged deletes, {c['refusals']} refusals with a reason"
        )


def judge(run):
    """Check the run against the promise; return a Verdict (violations empty when it holds)."""
    backend = run.backend
    violations = []
    ops = []
    for path in run.logs:
        if Path(path).exists():
            ops.extend(read_log(path, run.kills.get(path)))
    writes = {}  # (table, id) -> [(start, end, acknowledged)]
    deletes = {}  # (table, id) -> [(start, end, acknowledged)]
    parents_of = {}  # (child table, id) -> {(parent table, id)} ever named
    by_outcome = {}
    refusals = 0
    for op in ops:
        key = f"{op['op']} {op['outcome']}"
        by_outcome[key] = by_outcome.get(key, 0) + 1
        outcome, span = op["outcome"], (op["start"], op["end"])
        if outcome in ("error",):
            violations.append(f"{op['op']} raised: {op.get('error', '')[-500:]}")
        if outcome == "failed":
            violations.append(f"{op['op']} failed: {op.get('error', '')[:1500]}")
        if outcome == "refused":
            refusals += 1
            if not (op.get("reason") or "").strip():
                violations.append(f"{op['op']} refused without a reason: {op}")
        possible = outcome not in ("refused", "noop")
        if op["op"] == "load":
            rejected = {(t, i) for t, i, _r in op.get("rejected", [])}
            for t, i, reason in op.get("rejected", []):
                refusals += 1
                if not (reason or "").strip():
                    violations.append(f"load rejected {t} {i} without a reason")
            for table, (a, b) in op["windows"].items():
                for i in range(a, b):
                    key2 = (table, i)
                    if table in CHILD_COLUMNS:
                        row = ROW[table](i)
                        parents_of.setdefault(key2, set()).update(
                            {("users", int(row[1])), ("products", int(row[2]))}
                        )
                    if outcome == "ack" and key2 in rejected:
                        continue
                    writes.setdefault(key2, []).append((*span, outcome == "ack"))
        elif op["op"] in ("create", "repoint"):
            key2 = (op["table"], op["id"])
            named = {("users", op["user"])}
            if op["op"] == "create":
                named.add(("products", op["product"]))
            parents_of.setdefault(key2, set()).update(named)
            if possible:
                writes.setdefault(key2, []).append((*span, outcome == "ack"))
        elif op["op"] == "delete":
            key2 = (op["table"], op["id"])
            if outcome != "refused":
                deletes.setdefault(key2, []).append((*span, outcome in ("ack", "noop")))
    # 1. no orphan ever observed, none at the end
    checks = (
        [json.loads(x) for x in Path(run.observer_log).read_text().splitlines()]
        if (run.observer_log and Path(run.observer_log).exists())
        else []
    )
    observed = sum(c["orphans"] for c in checks)
    for c in checks:
        if c["orphans"] or c["corrupt"] or c["scan_error"]:
            violations.append(
                f"observer saw {c['orphans']} orphans {c['listed'][:5]} "
                f"corrupt={c['corrupt']} scan_error={c['scan_error']}"
            )
    if not run.final_report["ok"]:
        violations.append(
            f"final check_integrity: {run.final_report['orphan_count']} orphans "
            f"{run.final_report['orphans'][:5]}"
        )
    violations.extend(run.worker_errors)
    # 2. every acknowledged write present unless a delete that may have happened later
    present = {t: backend.ids(t) for t in backend.tables}
    acknowledged_rows = 0
    for (table, i), spans in writes.items():
        acked = [s for s in spans if s[2]]
        if not acked:
            continue
        acknowledged_rows += 1
        if i in present[table]:
            continue
        latest = max(s[0] for s in acked)
        removers = [(table, i)] if table not in CHILD_COLUMNS else parents_of.get((table, i), ())
        if not any(d[1] >= latest for p in removers for d in deletes.get(p, ())):
            violations.append(
                f"acknowledged write of {table} {i} (at {latest:.3f}) is gone and "
                "no delete that began later explains it"
            )
    # 3. every acknowledged delete gone unless a write that may have happened later
    acknowledged_deletes = 0
    for (table, i), spans in deletes.items():
        acked = [s for s in spans if s[2]]
        if not acked:
            continue
        acknowledged_deletes += 1
        if i not in present[table]:
            continue
        latest = max(s[0] for s in acked)
        if not any(w[1] >= latest for w in writes.get((table, i), ())):
            violations.append(
                f"acknowledged delete of {table} {i} (at {latest:.3f}) did not "
                "hold and no write that ended later explains it"
            )
    counts = {
        "operations": len(ops),
        "by_outcome": dict(sorted(by_outcome.items())),
        "kills": len(run.kills),
        "checks": len(checks),
        "orphans_observed": observed,
        "max_orphans": max((c["orphans"] for c in checks), default=0),
        "final_ok": run.final_report["ok"],
        "final_orphans": run.final_report["orphan_count"],
        "rows_acknowledged": acknowledged_rows,
        "deletes_acknowledged": acknowledged_deletes,
        "refusals": refusals,
    }
    return Verdict(counts, violations)


# --- the processes of the race tests --------------------------------------------------------


def widen_check_window(seconds):
    """Sleep after every parent lookup of the guard (test-only): the moment a write has
    validated its parents and not yet committed lasts long enough for a delete to land."""
    from crossdb import guard

    lookup = guard.existing_parents

    def slow(parent_table, ids):
        found = lookup(parent_table, ids)
        time.sleep(seconds)
        return found

    guard.existing_parents = slow


def saver_main(args):
    """Save orders naming the user a cascading deleter will delete next, by every path."""
    _setup_django()
    from crossdb import guard
    from crossdb.guard import MissingParent
    from django.core.exceptions import ValidationError
    from django.test import Client

    from core.models import Order, User

    if args.widen:
        widen_check_window(args.widen)
    if args.bypass_recheck:
        # Negative control: the write is validated (full_clean, as the admin does) but not
        # checked again inside the guard. On SQLite MULTIDS_TEST_NO_GUARD=1 alone cannot do
        # this: save()'s BEGIN IMMEDIATE on orders.db still serialises the check in
        # require_parents with the deleter, so that check is skipped here.
        guard.require_parents = lambda *args, **kwargs: None
    log = Log(args.log)
    rng = random.Random(args.seed)
    client = None
    if "admin" in args.paths:
        from django.contrib.auth import get_user_model

        staff = get_user_model().objects.create_superuser("racer", "racer@example.com", "pw-racer")
        client = Client(raise_request_exception=False)
        client.force_login(staff)
    from core.sources import FIRST_ID  # the first generated product's id

    mine = []  # orders this process stored and may re-point
    next_id = args.id_base
    deadline = time.time() + args.seconds
    for _ in range(args.max_ops):
        if time.time() > deadline or Path(args.stop).exists():
            break
        target = User.objects.order_by("id").values_list("id", flat=True).first()
        if target is None:
            break
        path = rng.choice(args.paths.split(","))
        if path == "repoint" and not mine:
            path = "create"
        next_id += 1
        pk = rng.choice(mine) if path == "repoint" else next_id
        n = log.begin(path, table="orders", id=pk, user=target)
        try:
            if path == "create":
                Order(id=pk, user_id=target, product_id=FIRST_ID, quantity=1).full_clean()
                Order.objects.create(id=pk, user_id=target, product_id=FIRST_ID, quantity=1)
                mine.append(pk)
            elif path == "repoint":
                order = Order.objects.filter(pk=pk).first()
                if order is None:
                    mine.remove(pk)
                    log.end(n, "noop")
                    continue
                order.user_id = target
                order.full_clean()
                order.save()
            else:
                response = client.post(
                    "/admin/core/order/add/",
                    {"id": pk, "user_id": target, "product_id": FIRST_ID, "quantity": 1},
                )
                if response.status_code == 302:
                    mine.append(pk)
                elif response.status_code == 200:
                    import re

                    page = response.content.decode(errors="replace")
                    lists = re.findall(r'class="errorlist[^"]*"[^>]*>(.*?)</ul>', page, re.S)
                    errors = "; ".join(re.sub(r"<[^>]+>", "", x).strip() for x in lists)
                    log.end(n, "refused", reason=errors, error_type="form")
                    continue
                else:
                    log.end(
                        n,
                        "error",
                        error=f"admin answered {response.status_code}: "
                        + (
                            repr(response.exc_info[1])
                            if getattr(response, "exc_info", None)
                            else response.content[:300].decode(errors="replace")
                        ),
                        status=response.status_code,
                    )
                    continue
        except MissingParent as exc:
            log.end(n, "refused", reason=str(exc), error_type=type(exc).__name__)
            continue
        except ValidationError as exc:  # full_clean: the user was gone at validation
            log.end(n, "refused", reason="; ".join(exc.messages), error_type="form")
            continue
        log.end(n, "ack")


def cascader_main(args):
    """Delete users in id order with their children (CASCADE), one every few milliseconds."""
    _setup_django()
    from crossdb import deletion

    from core.models import User

    log = Log(args.log)
    rng = random.Random(args.seed)
    deadline = time.time() + args.seconds
    for pk in User.objects.order_by("id").values_list("id", flat=True)[: args.max_ops]:
        if time.time() > deadline:
            break
        time.sleep(rng.uniform(0, args.pause))
        n = log.begin("delete", table="users", id=pk, cascade=True)
        result = deletion.delete("users", [pk], with_children=True)
        log.end(n, "ack" if result.parents else "noop", children=result.children)
    Path(args.stop).touch()


def crossload_main(args):
    """insert_data --from DIR in this process, logging when each batch began and committed.

    With --stale the writers see parents as they were when this process started, as the
    loader did before issue 8 (parents looked up once, at validation): the negative control.
    LOG.ready says the process is set up (and has seen the parents, with --stale); the test
    lets both loads go only then, so neither sees the other's users at its start.
    """
    _setup_django()
    from crossdb import guard
    from crossdb.loading.processes import Written
    from crossdb.loading.writers import BulkWriter
    from django.core.management import call_command

    log = Log(args.log)
    if args.stale:
        lookup = guard.existing_parents
        at_start = {t: lookup(t, range(1, args.max_id + 1)) for t in ("users", "products")}

        def stale(parent_table, ids):
            return set(ids) & at_start[parent_table]

        guard.existing_parents = stale
    write = BulkWriter.write

    def logged_write(self, job):
        """Log each job the write committed: job, and those that joined its transaction.

        A joined job looked its parents up after the write began, so the write's start is
        an early bound of when each began: the judge can only be stricter with it.
        """
        began = time.time()
        written = write(self, job)
        committed = time.time()
        jobs = [job] if isinstance(written, Written) else [done for done, _result in written]
        for done in jobs:
            ids = [int(row[0]) for row in done.rows]  # a Block's rows are numpy integers
            log.write(
                kind="batch",
                table=self.table,
                seq=done.seq,
                first=min(ids),
                last=max(ids),
                began=began,
                committed=committed,
            )
        return written

    BulkWriter.write = logged_write
    Path(f"{args.log}.ready").touch()  # set up, and with --stale the parents seen taken
    while not Path(args.go).exists():
        time.sleep(0.002)
    call_command(
        "insert_data",
        "--from",
        args.source,
        "--batch-size",
        str(args.batch_size),
        "--no-progress",
        "--rejects",
        args.rejects,
        "--show",
        "0",
    )


def command_main(args):
    """A manage.py command started ahead of time: Django is set up, then it waits for go, so
    the moment it runs does not depend on how long start-up takes on a loaded machine."""
    from django.core.management import execute_from_command_line

    _setup_django()
    while not Path(args.go).exists():
        time.sleep(0.001)
    print(f"GO {time.time()}", file=sys.stderr, flush=True)
    execute_from_command_line(["manage.py", *args.argv])


def pausedload_main(args):
    """A manage.py command (insert_data) whose main process stops reading once it has sent
    ``--after`` rows of ``--table`` to the writers, at a batch boundary: it writes how many
    it sent into PAUSE.paused and waits for PAUSE.go. Every row sent is then committed or
    on its way, and none after it is read: a schedule that holds on any machine, however
    busy, where stopping the process at a share of rows seen committed depended on how soon
    the test looked."""
    _setup_django()
    from crossdb.loading import load
    from django.core.management import execute_from_command_line

    batches = load.table_batches

    def pausing(source, table, size):
        sent, paused = 0, False
        for batch in batches(source, table, size):
            if table == args.table and sent >= args.after and not paused:
                paused = True
                note = Path(f"{args.pause}.tmp")
                note.write_text(str(sent))
                note.replace(f"{args.pause}.paused")  # whole when the test reads it
                deadline = time.monotonic() + 300
                while not Path(f"{args.pause}.go").exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
            yield batch
            sent += len(batch)

    load.table_batches = pausing
    execute_from_command_line(["manage.py", *args.argv])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.concurrency")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--role", choices=sorted(MIXES), required=True)
    worker.add_argument("--worker", type=int, required=True)
    worker.add_argument("--seed", type=int, required=True)
    worker.add_argument("--log", required=True)
    worker.add_argument("--seconds", type=float, required=True)
    worker.add_argument("--max-ops", type=int, default=100_000)
    worker.add_argument("--id-base", type=int, required=True)
    observer = sub.add_parser("observer")
    observer.add_argument("--log", required=True)
    observer.add_argument("--seconds", type=float, required=True)
    observer.add_argument("--stop", required=True)
    saver = sub.add_parser("saver")
    saver.add_argument("--paths", default="create,repoint,admin")
    saver.add_argument("--widen", type=float, default=0.0)
    saver.add_argument("--bypass-recheck", action="store_true")
    cascader = sub.add_parser("cascader")
    cascader.add_argument("--pause", type=float, default=0.02)
    for p in (saver, cascader):
        p.add_argument("--log", required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--seconds", type=float, default=30)
        p.add_argument("--max-ops", type=int, default=2000)
        p.add_argument("--stop", required=True)
        p.add_argument("--id-base", type=int, default=1_000_000)
    cross = sub.add_parser("crossload")
    cross.add_argument("--source", required=True)
    cross.add_argument("--log", required=True)
    cross.add_argument("--rejects", required=True)
    cross.add_argument("--go", required=True)
    cross.add_argument("--batch-size", type=int, default=1000)
    cross.add_argument("--stale", action="store_true")
    cross.add_argument("--max-id", type=int, default=100_000)
    command = sub.add_parser("command")
    command.add_argument("--go", required=True)
    command.add_argument("argv", nargs=argparse.REMAINDER)
    paused = sub.add_parser("pausedload")
    paused.add_argument("--table", required=True)
    paused.add_argument("--after", type=int, required=True)
    paused.add_argument("--pause", required=True)
    paused.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    commands = {"command": command_main, "pausedload": pausedload_main}
    commands |= {"worker": worker_main, "observer": observer_main, "saver": saver_main}
    commands |= {"cascader": cascader_main, "crossload": crossload_main}
    commands[args.command](args)


if __name__ == "__main__":
    main()
