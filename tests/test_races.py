"""Issue 8's races, run with real processes on SQLite and on PostgreSQL, each with its
negative control (the same schedule with ``MULTIDS_TEST_NO_GUARD=1`` must leave orphans).

* a load racing ``delete_row users K`` (with and without ``--with-children``);
* validate-then-save (``create``, a re-pointing ``save()``, the admin's add form) racing a
  cascading delete of the user it names;
* two loads whose orders name each other's users: every verdict is the one a sequential
  order gives, judged against the moments each batch began and committed.

Every process runs in its own process group and is killed in a ``finally``; every loop is
bounded in tries and in seconds.
"""

import csv
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.sources import FIRST_ID, SyntheticSource
from tests.concurrency import (
    ROOT,
    Log,
    PostgresDatabases,
    Processes,
    make_backend,
    read_log,
    wait_until,
)
from tests.conftest import all_databases
from tests.launch import HOLD
from tests.test_postgres import postgres_server  # noqa: F401 (fixture)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
USERS, PRODUCTS, ORDERS, BATCH = 20_000, 500, 60_000, 2000
LOAD = [
    "insert_data",
    "--no-progress",
    f"--users={USERS}",
    f"--products={PRODUCTS}",
    f"--orders={ORDERS}",
    f"--batch-size={BATCH}",
    "--show=0",
]
# The scheduled tries (and the negative control): which user, which delete, and the share of
# the orders committed when the delete is fired.
SCHEDULES = (("late", False, 0.05), ("spread", True, 0.3))
BUDGET_SECONDS = 45  # random tries stop once a backend's test has run this long


@pytest.fixture
def backend_factory(request, tmp_path):
    """make(settings) -> a migrated Backend of the test's parameter; databases dropped after."""
    name = request.param
    postgres = None
    if name == "postgresql":
        postgres = PostgresDatabases(request.getfixturevalue("postgres_server"))
    try:
        yield lambda settings="multids.settings": make_backend(name, tmp_path, settings, postgres)
    finally:
        if postgres:
            postgres.drop_all()


def reset(backend):
    """Empty the domain tables between tries (the migrations stay)."""
    for table in reversed(backend.tables):
        if backend.name == "sqlite":
            import sqlite3

            from tests.concurrency import FILES, TABLE_ALIAS

            with sqlite3.connect(backend.data_dir / FILES[TABLE_ALIAS[table]]) as db:
                db.execute(f"DELETE FROM {table}")
        else:
            import psycopg

            from tests.concurrency import TABLE_ALIAS, VARIABLES

            with psycopg.connect(backend.urls[VARIABLES[TABLE_ALIAS[table]]]) as db:
                db.execute(f"TRUNCATE {table}")


# --- a. delete_row racing a load ------------------------------------------------------------


def orders_by_user():
    """{user id: [positions in the load of the orders naming it]} for the synthetic load."""
    source = SyntheticSource(USERS, PRODUCTS, ORDERS)
    named = {}
    for position, (_line, row) in enumerate(source.rows("orders")):
        named.setdefault(row[1], []).append((position, row[0]))
    return named


NAMED = None


def named():
    global NAMED
    if NAMED is None:
        NAMED = orders_by_user()
    return NAMED


def user_for(kind, rng):
    """A user whose orders make the race bite.

    "late": no order before 70% of the load and some after, so a PROTECT delete fired
    early in the load is accepted and the load's later orders must be rejected; "spread":
    orders before 20% and after 80%, so a cascading delete mid-load deletes some and races others.
    """
    candidates = []
    for user, orders in named().items():
        first, last = orders[0][0] / ORDERS, orders[-1][0] / ORDERS
        if kind == "late" and 0.7 < first and last < 0.97 and len(orders) > 1:
            candidates.append(user)
        elif kind == "spread" and first < 0.2 and last > 0.8:
            candidates.append(user)
    return rng.choice(sorted(candidates))


# A load into an empty orders table on PostgreSQL commits every order at once, at its end,
# inside the table's lock (crossdb.loading.segment). The schedules that fire a delete between two
# committed order batches load batch by batch instead; random moments keep the default.
BATCH_BY_BATCH = {"MULTIDS_LOAD_SEGMENT_MB": "0"}


def delete_during_load(
    backend,
    processes,
    *,
    user,
    with_orders,
    fire,
    guard=True,
    prepare=None,
    hold=None,
    segments=False,
):
    """Start the load, run delete_row users USER when fire(load) returns; judge the end.

    prepare(backend), if given, runs first and returns the load's arguments (else LOAD);
    hold, if given, is the load's ``crossdb.loading.writers.HOLD`` path; segments: whether a load
    into the empty orders table may take it in one transaction (``BATCH_BY_BATCH`` when not).

    Returns a dict of facts; asserts everything that must hold whatever the timing (when the
    guard is on): the load exits 0, check_integrity is ok, an acknowledged delete holds,
    every order is stored unless it names the deleted user, and each of those is rejected
    with a reason naming it or was deleted with it.
    """
    reset(backend)
    load_args = prepare(backend) if prepare else LOAD
    if isinstance(fire, PausedLoad):
        load_args = fire.wrap(load_args)
    rejects = backend.data_dir / "rejects.csv"
    go = backend.data_dir / f"go-{time.monotonic_ns()}"
    delete = processes.python(
        backend,
        "command",
        "--go",
        str(go),
        "delete_row",
        "users",
        str(user),
        *(["--with-children"] if with_orders else []),
        guard=guard,
    )
    env = ({HOLD: hold} if hold else {}) | ({} if segments else BATCH_BY_BATCH)
    start = processes.python if isinstance(fire, PausedLoad) else processes.manage
    load = start(backend, *load_args, f"--rejects={rejects}", guard=guard, env=env)
    try:
        resume = fire(load)
        go.touch()
        began = time.time()
        orders_at_go = backend.count("orders")
        try:
            delete_out, delete_err = delete.communicate(timeout=300)
        finally:
            if resume:
                resume()
        ended = time.time()
        out, err = load.communicate(timeout=300)
    finally:
        processes.kill(load)
        processes.kill(delete)
    delete = subprocess.CompletedProcess(delete.args, delete.returncode, delete_out, delete_err)
    status, report = backend.check_integrity()
    facts = {
        "user": user,
        "with_orders": with_orders,
        "delete_exit": delete.returncode,
        "delete_said": (delete.stdout + delete.stderr).strip().splitlines()[-1:],
        "delete_seconds": round(ended - began, 2),
        "orders_at_go": orders_at_go,
        "load_exit": load.returncode,
        "orphans": report["orphan_count"],
        "integrity_exit": status,
    }
    assert "Traceback" not in delete.stderr + err, delete.stderr[-2000:] + err[-2000:]
    if not guard:
        return facts
    assert load.returncode == 0, err[-2000:]
    assert status == 0 and report["ok"], report
    with open(rejects, newline="", encoding="utf-8") as handle:
        rejected = list(csv.DictReader(handle))
    mine = {order for _position, order in named()[user]}
    users = backend.ids("users")
    orders = dict(backend.query("orders", "id, user_id"))
    deleted = delete.returncode == 0 and f"deleted customer {user}" in delete.stdout
    facts["deleted"] = deleted
    facts["rejected"] = len(rejected)
    facts["stored_of_user"] = sum(1 for o in mine if o in orders)
    if deleted:
        assert user not in users, "an acknowledged delete did not hold"
        assert user not in orders.values(), "an order names the deleted user"
        for row in rejected:
            assert row["table"] == "orders" and int(row["id"]) in mine, row
            assert row["reason"] in (
                f"customer {user} was deleted while this load ran",
                f"customer {user} does not exist",
            ), row
        assert set(orders) == set(range(FIRST_ID, FIRST_ID + ORDERS)) - mine
    else:
        # refused (PROTECT with committed orders) or fired before the user was committed
        assert f"customer {user} has" in delete.stderr or "does not exist" in delete.stderr, (
            delete.stderr
        )
        assert rejected == [], rejected[:5]
        assert user in users
        assert len(orders) == ORDERS
    return facts


class PausedLoad:
    """fire(): the load's main process pauses once it has sent the first share of its
    orders (``python -m tests.concurrency pausedload``, at a batch boundary), the writers
    commit what was sent and go idle, holding no lock, and the delete runs to its end while
    the later orders are still unread; resume() lets the load go on.

    The pause is a point in the load, not a moment: a user whose orders all come later
    (``user_for("late")``) has none committed when the delete runs, whatever the machine's
    speed. It used to be a SIGSTOP sent once the test saw that share committed, and on a
    busy machine the load had run past the user's first orders by then (the guard-off
    delete was refused, and the negative control found no orphan).
    """

    def __init__(self, backend, share):
        self.backend = backend
        self.after = int(share * ORDERS)
        self.pause = backend.data_dir / f"pause-{time.monotonic_ns()}"

    def wrap(self, load_args):
        """The load's arguments, for ``python -m tests.concurrency``."""
        pause = ["--table=orders", f"--after={self.after}", f"--pause={self.pause}"]
        return ["pausedload", *pause, *load_args]

    def __call__(self, load):
        paused = Path(f"{self.pause}.paused")
        assert wait_until(lambda: load.poll() is not None or paused.exists(), 300), "no pause"
        assert load.poll() is None, "the load ended before its pause"
        sent = int(paused.read_text())
        count = self.backend.count
        assert wait_until(lambda: count("orders") >= sent, 300), "the orders sent never landed"
        assert count("orders") == sent, (count("orders"), sent)  # and none after them
        return Path(f"{self.pause}.go").touch


def at_random_moment(backend, rng):
    """fire(): 0.2-2 s after the first users are committed (start-up on a loaded machine
    varies more than that, so the clock starts when rows land)."""

    def fire(load):
        wait_until(lambda: load.poll() is not None or backend.count("users") > 0, 120)
        time.sleep(rng.uniform(0.2, 2.0))
        return None  # the load runs on: the delete lands wherever it lands

    return fire


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_delete_row_racing_a_load_never_leaves_an_orphan(backend_factory):
    backend = backend_factory()
    rng = random.Random(8)
    started = time.monotonic()
    tries = []
    with Processes() as processes:
        # The schedules of the negative control below: the delete lands mid-load.
        for kind, with_orders, share in SCHEDULES:
            user = user_for(kind, rng)
            tries.append(
                delete_during_load(
                    backend,
                    processes,
                    user=user,
                    with_orders=with_orders,
                    fire=PausedLoad(backend, share),
                )
            )
        # Random moments, bounded in time and count.
        while len(tries) < 6 and time.monotonic() - started < BUDGET_SECONDS:
            with_orders = rng.random() < 0.5
            user = user_for("spread" if with_orders else "late", rng)
            tries.append(
                delete_during_load(
                    backend,
                    processes,
                    user=user,
                    with_orders=with_orders,
                    fire=at_random_moment(backend, rng),
                    segments=True,
                )
            )
    print(f"\n{backend.name}: {len(tries)} tries")
    for facts in tries:
        print(f"  {facts}")
    # The two scheduled tries must really have raced: the delete was acknowledged while the
    # load still had orders naming the user to write, and the load rejected them.
    for facts in tries[:2]:
        assert facts["deleted"], facts
        assert facts["rejected"] > 0, facts


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_negative_control_delete_row_racing_a_load_without_the_guard(backend_factory):
    backend = backend_factory()
    rng = random.Random(8)
    tries = []
    with Processes() as processes:
        for kind, with_orders, share in SCHEDULES:
            tries.append(
                delete_during_load(
                    backend,
                    processes,
                    user=user_for(kind, rng),
                    with_orders=with_orders,
                    fire=PausedLoad(backend, share),
                    guard=False,
                )
            )
    print(f"\n{backend.name}, guard off: {tries}")
    for facts in tries:
        assert facts["orphans"] > 0 and facts["integrity_exit"] == 1, facts


# --- a'. delete_row racing a load of orders whose parents an earlier load stored -----------


def parents_stored_earlier(backend):
    """Store the users and products of LOAD in an earlier run; return the arguments of a
    load of its orders alone, from a CSV file. Every order's parents are then the
    database's, not the run's: the writer looks each up inside the guard."""
    backend.manage(
        "insert_data", "--no-progress", f"--users={USERS}", f"--products={PRODUCTS}", check=True
    )
    directory = backend.data_dir / "orders-only"
    directory.mkdir(exist_ok=True)
    with open(directory / "orders.csv", "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "user_id", "product_id", "quantity"])
        out.writerows(row for _line, row in SyntheticSource(USERS, PRODUCTS, ORDERS).rows("orders"))
    return ["insert_data", "--no-progress", "--from", str(directory), f"--batch-size={BATCH}"]


def user_in_the_first_batch():
    """A user with an order in the load's first batch and more after it."""
    return min(u for u, orders in named().items() if orders[0][0] < BATCH and len(orders) > 2)


def while_the_first_batch_holds(hold, *, until_the_delete_ends=False):
    """fire(): once the load's first batch has looked its parents up and holds its
    transaction open (``HOLD``), let it go on one second later, whatever the delete is
    doing by then: done (nothing stopped it) or waiting for the guard.

    until_the_delete_ends: let it go only once the delete has ended, for a delete that
    nothing may stop (the guard off, on PostgreSQL): it then always runs inside the hold,
    where one second was not always enough for its start-up on a busy machine. A delete
    the guard stops would wait for ever that way (until HOLD gives up).
    """

    def fire(load):
        held = Path(f"{hold}.held")
        assert wait_until(lambda: load.poll() is not None or held.exists(), 120), "no hold"
        assert load.poll() is None, "the load ended before its first batch held"
        if until_the_delete_ends:
            return Path(f"{hold}.go").touch  # called once the delete has ended
        timer = threading.Timer(1.0, Path(f"{hold}.go").touch)
        timer.start()
        return timer.join  # after the delete ended: the batch has been let go

    return fire


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_delete_row_racing_a_load_of_orders_whose_users_were_stored_earlier(backend_factory):
    backend = backend_factory()
    user = user_in_the_first_batch()
    tries = []
    with Processes() as processes:
        for with_orders in (False, True):
            hold = str(backend.data_dir / f"hold-{time.monotonic_ns()}")
            tries.append(
                delete_during_load(
                    backend,
                    processes,
                    user=user,
                    with_orders=with_orders,
                    fire=while_the_first_batch_holds(hold),
                    prepare=parents_stored_earlier,
                    hold=hold,
                )
            )
        tries.append(
            delete_during_load(
                backend,
                processes,
                user=user_for("spread", random.Random(8)),
                with_orders=True,
                fire=PausedLoad(backend, 0.3),
                prepare=parents_stored_earlier,
            )
        )
    print(f"\n{backend.name}: {tries}")
    protect, cascade, spread = tries
    # No order was committed when the delete began, and the held batch had the user's
    # first order. The delete waited for it: PROTECT then saw the order and refused;
    # CASCADE deleted it with the user (and the user's later orders were rejected, or, on
    # SQLite, where the load may take the lock back first, committed and deleted too).
    assert protect["orders_at_go"] == 0 and not protect["deleted"], protect
    assert "has" in protect["delete_said"][0] and "order" in protect["delete_said"][0], protect
    assert cascade["orders_at_go"] == 0 and cascade["deleted"], cascade
    assert cascade["stored_of_user"] == 0, cascade
    assert spread["deleted"] and spread["rejected"] > 0, spread


@pytest.mark.postgres
@pytest.mark.parametrize("backend_factory", ["postgresql"], indirect=True)
def test_negative_control_a_load_of_orders_whose_users_were_stored_earlier_without_the_guard(
    backend_factory,
):
    """PostgreSQL only: on SQLite the deleter's BEGIN IMMEDIATE on orders.db waits for the
    held batch's write lock with the guard off too (the lock is the guard there)."""
    backend = backend_factory()
    with Processes() as processes:
        hold = str(backend.data_dir / "hold")
        facts = delete_during_load(
            backend,
            processes,
            user=user_in_the_first_batch(),
            with_orders=False,
            fire=while_the_first_batch_holds(hold, until_the_delete_ends=True),
            guard=False,
            prepare=parents_stored_earlier,
            hold=hold,
        )
    print(f"\n{backend.name}, guard off: {facts}")
    assert facts["orphans"] > 0 and facts["integrity_exit"] == 1, facts


# --- b. validate-then-save racing a cascading delete -----------------------------------------


def save_racing_cascade(backend, *, guard, paths, widen, seconds):
    """A saver names the user the cascader deletes next, by every path; return the facts."""
    reset(backend)
    backend.manage("insert_data", "--no-progress", "--users=150", "--products=5", check=True)
    logs = backend.data_dir / f"race-b-{time.monotonic_ns()}"
    logs.mkdir()
    stop = logs / "stop"
    with Processes() as processes:
        saver = processes.python(
            backend,
            "saver",
            "--log",
            str(logs / "saver.jsonl"),
            "--stop",
            str(stop),
            "--paths",
            paths,
            "--widen",
            str(widen),
            "--seconds",
            str(seconds),
            *([] if guard else ["--bypass-recheck"]),
            guard=guard,
        )
        time.sleep(1.0)  # the saver imports Django and logs in first
        cascader = processes.python(
            backend,
            "cascader",
            "--log",
            str(logs / "cascader.jsonl"),
            "--stop",
            str(stop),
            "--seconds",
            str(seconds),
            "--pause",
            "0.2",
            guard=guard,
        )
        outputs = [p.communicate(timeout=seconds + 120) for p in (cascader, saver)]
        codes = [cascader.returncode, saver.returncode]
    status, report = backend.check_integrity()
    saves = read_log(logs / "saver.jsonl", None)
    deletes = read_log(logs / "cascader.jsonl", None)
    outcomes = {}
    for op in saves:
        key = f"{op['op']} {op['outcome']}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "codes": codes,
        "stderr": [err[-1500:] for _out, err in outputs],
        "orphans": report["orphan_count"],
        "integrity_exit": status,
        "outcomes": outcomes,
        "saves": saves,
        "deletes": len(deletes),
    }


def check_save_race(facts):
    assert facts["codes"] == [0, 0], facts["stderr"]
    assert facts["integrity_exit"] == 0 and facts["orphans"] == 0, facts
    refusals = [op for op in facts["saves"] if op["outcome"] == "refused"]
    for op in refusals:
        assert op["error_type"] in ("MissingParent", "form"), op
        assert f"customer {op['user']} does not exist" in op["reason"], op
    errors = [op for op in facts["saves"] if op["outcome"] == "error"]
    assert errors == [], errors[:3]
    return refusals


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_orm_saves_racing_a_cascading_delete_never_leave_an_orphan(backend_factory):
    backend = backend_factory()
    facts = save_racing_cascade(backend, guard=True, paths="create,repoint", widen=0.05, seconds=10)
    print(
        f"\n{backend.name}: {facts['outcomes']}, {facts['deletes']} cascading deletes, "
        f"{facts['orphans']} orphans"
    )
    refusals = check_save_race(facts)
    by_guard = [op for op in refusals if op["error_type"] == "MissingParent"]
    assert by_guard, "no save was refused by the guard: the race never happened"
    assert facts["outcomes"].get("create ack", 0) > 0


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_negative_control_orm_saves_racing_a_cascading_delete_without_the_guard(
    backend_factory,
):
    backend = backend_factory()
    facts = save_racing_cascade(
        backend, guard=False, paths="create,repoint", widen=0.05, seconds=10
    )
    print(f"\n{backend.name}, guard off: {facts['outcomes']}, {facts['orphans']} orphans")
    assert facts["orphans"] > 0 and facts["integrity_exit"] == 1, facts["outcomes"]


@pytest.mark.parametrize(
    "backend_factory",
    ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres])],
    indirect=True,
)
def test_admin_add_form_racing_a_cascading_delete_answers_with_a_form_error(backend_factory):
    backend = backend_factory()
    facts = save_racing_cascade(backend, guard=True, paths="admin", widen=0.05, seconds=10)
    print(f"\n{backend.name}: {facts['outcomes']}, {facts['orphans']} orphans")
    assert facts["orphans"] == 0
    check_save_race(facts)


# --- c. two loads naming each other's users -------------------------------------------------

N, M, P = 2000, 20_000, 50  # users per load, orders per load, products (both load them)


def write_cross_inputs(directory):
    """Load A: users 1..N, orders 1..M naming users N+1..2N; load B the reverse."""
    sources = {}
    for name, users, orders, other in (
        ("a", range(1, N + 1), range(1, M + 1), N),
        ("b", range(N + 1, 2 * N + 1), range(M + 1, 2 * M + 1), 0),
    ):
        path = directory / name
        path.mkdir()
        with open(path / "users.csv", "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["id", "name", "email"])
            out.writerows((u, f"User {u}", f"user{u}@example.com") for u in users)
        with open(path / "products.csv", "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["id", "name", "price"])
            out.writerows((p, f"Product {p}", "9.99") for p in range(1, P + 1))
        with open(path / "orders.csv", "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["id", "user_id", "product_id", "quantity"])
            out.writerows((o, other + 1 + o % N, 1 + o % P, 1) for o in orders)
        sources[name] = path
    return sources


def cross_user(order):
    return (N if order <= M else 0) + 1 + order % N


def cross_loads(backend, *, stale):
    reset(backend)
    work = backend.data_dir / f"cross-{time.monotonic_ns()}"
    work.mkdir()
    sources = write_cross_inputs(work)
    go = work / "go"
    started = {}
    with Processes() as processes:
        for name, source in sources.items():
            started[name] = processes.python(
                backend,
                "crossload",
                "--source",
                str(source),
                "--log",
                str(work / f"{name}.jsonl"),
                "--rejects",
                str(work / f"{name}-rejects.csv"),
                "--go",
                str(go),
                *(["--stale"] if stale else []),
            )
        # Both processes set up (with --stale, parents seen) and waiting at the line: a
        # fixed pause let a process slow to import Django see the other's users already
        # committed, and the negative control then found nothing wrong on a busy machine.
        ready = [work / f"{name}.jsonl.ready" for name in sources]
        assert wait_until(lambda: all(r.exists() for r in ready), 120), "a load never started"
        go.touch()
        outputs = {n: p.communicate(timeout=300) for n, p in started.items()}
    for name, process in started.items():
        assert process.returncode == 0, outputs[name][1][-2000:]
    batches = []
    for name in sources:
        for line in (work / f"{name}.jsonl").read_text().splitlines():
            batches.append(json.loads(line) | {"load": name})
    committed = {}  # user id -> when its batch committed
    for batch in batches:
        if batch["table"] == "users":
            for user in range(batch["first"], batch["last"] + 1):
                committed[user] = batch["committed"]
    began = {}  # order id -> when its batch began
    for batch in batches:
        if batch["table"] == "orders":
            for order in range(batch["first"], batch["last"] + 1):
                began[order] = batch["began"]
    rejected = {}
    for name in sources:
        with open(work / f"{name}-rejects.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                rejected[int(row["id"])] = row
    stored = backend.ids("orders")
    status, report = backend.check_integrity()
    wrong = [
        (order, row["reason"], round(committed[cross_user(order)] - began.get(order, 0), 3))
        for order, row in rejected.items()
        if committed.get(cross_user(order), float("inf")) < began.get(order, float("inf"))
    ]
    return {
        "stored": len(stored),
        "rejected": len(rejected),
        "wrong": wrong,
        "orphans": report["orphan_count"],
        "integrity_exit": status,
        "accounted": stored | set(rejected) == set(range(1, 2 * M + 1))
        and not stored & set(rejected),
        "reasons": {row["reason"] for row in rejected.values()},
        "rejected_reason_names_user": all(
            row["reason"] == f"customer {cross_user(order)} does not exist"
            for order, row in rejected.items()
        ),
    }


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_two_loads_naming_each_others_users_end_as_a_sequential_order(backend_factory):
    """An order is rejected only if its user was not committed when its batch began: a user
    the other load had committed before is found (looked up inside the guard at commit)."""
    backend = backend_factory()
    facts = cross_loads(backend, stale=False)
    print(
        f"\n{backend.name}: {facts['stored']} stored, {facts['rejected']} rejected, "
        f"{len(facts['wrong'])} rejected although their user was committed first"
    )
    assert facts["integrity_exit"] == 0 and facts["orphans"] == 0
    assert facts["accounted"], "an order was neither stored nor rejected, or both"
    assert facts["rejected_reason_names_user"], facts["reasons"]
    assert facts["wrong"] == [], facts["wrong"][:10]
    assert facts["stored"] > 0


@pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)
def test_negative_control_loads_that_look_parents_up_once_are_caught(backend_factory):
    """The same judge fails a loader whose writers see parents as they were at its start."""
    backend = backend_factory()
    facts = cross_loads(backend, stale=True)
    print(
        f"\n{backend.name}, stale lookups: {facts['rejected']} rejected, "
        f"{len(facts['wrong'])} of them although their user was committed first"
    )
    assert len(facts["wrong"]) > 0


def test_the_log_of_a_killed_operation_reads_as_killed(tmp_path):
    """The checker's logs: an operation that began and never ended counts as killed."""
    log = Log(tmp_path / "w.jsonl")
    n = log.begin("create", table="orders", id=1, user=1, product=1)
    log.end(n, "ack")
    log.begin("delete", table="users", id=1, cascade=True)
    ops = read_log(tmp_path / "w.jsonl", kill_time=123.0)
    assert [(o["op"], o["outcome"]) for o in ops] == [("create", "ack"), ("delete", "killed")]
    assert ops[1]["end"] == 123.0


def test_the_workers_refuse_a_bad_role(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.concurrency", "worker", "--role", "nobody"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "invalid choice: 'nobody'" in done.stderr


@all_databases
def test_changing_a_parents_id_through_the_orm_is_refused_or_keeps_its_children():
    from crossdb.integrity import check_integrity

    from core.models import Order, Product, User

    User.objects.create(id=1, name="Ann", email="ann@example.com")
    Product.objects.create(id=1, name="Pen", price="1.50")
    Order.objects.create(id=1, user_id=1, product_id=1, quantity=1)
    from crossdb.deletion import HasChildren
    from django.db import IntegrityError

    try:
        User.objects.filter(pk=1).update(id=2)
    except (IntegrityError, HasChildren) as exc:  # a refusal must say why
        assert "order" in str(exc), exc
    assert check_integrity().orphan_count == 0
