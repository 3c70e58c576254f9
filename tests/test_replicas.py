"""Read replicas with causal reads (issue 31), against real streaming replicas.

``.ci/setup-replicas.sh`` makes two PostgreSQL primaries on this machine, each with a hot
standby: A (127.0.0.1:5433, replica 5434) holds default, users and products; B (5435,
replica 5436) holds orders. Each test creates its databases on the primaries (replication
brings them to the replicas), points the processes it starts at them by URL with
``*_DATABASE_REPLICA_URLS``, and drops them at the end. Lag is injected deterministically by
pausing replay (``pg_wal_replay_pause()``) or with ``recovery_min_apply_delay``; every
test resumes replay and restarts a stopped replica when it ends.

Without the clusters these tests skip with one line saying how to make them; in CI (``CI``
set) they fail instead.
"""

import csv
import html
import http.cookiejar
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.concurrency import ROOT, Backend, Processes, wait_until
from tests.launch import HOLD

pytestmark = pytest.mark.postgres

HOST = "127.0.0.1"
PRIMARY_A, REPLICA_A, PRIMARY_B, REPLICA_B = 5433, 5434, 5435, 5436
# alias -> (primary port, replica port or None)
PLACES = {
    "default": (PRIMARY_A, None),
    "users_db": (PRIMARY_A, REPLICA_A),
    "products_db": (PRIMARY_A, REPLICA_A),
    "orders_db": (PRIMARY_B, REPLICA_B),
}
VARIABLES = {
    "default": "DATABASE",
    "users_db": "USERS_DATABASE",
    "orders_db": "ORDERS_DATABASE",
    "products_db": "PRODUCTS_DATABASE",
}
CLUSTERS = {REPLICA_A: "multids_a_replica", REPLICA_B: "multids_b_replica"}


def _in_ci():
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def url(port, name, user="multids"):
    return f"postgresql://{user}@{HOST}:{port}/{name}"


def admin(port):
    """A superuser connection (trust on 127.0.0.1) to the postgres database of port."""
    return psycopg.connect(url(port, "postgres", "postgres"), autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def replica_servers():
    """The four servers, once each answered as what it should be; skip (fail in CI) if not."""
    try:
        for port in PRIMARY_A, REPLICA_A, PRIMARY_B, REPLICA_B:
            with admin(port) as db:
                recovering = db.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            if recovering != (port in CLUSTERS):
                raise psycopg.OperationalError(f"{HOST}:{port} is not what the setup makes")
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"the replica clusters are not running ({first}); run: bash .ci/setup-replicas.sh"
        if _in_ci():
            pytest.fail(f"CI is set, so the replica tests must run: {reason}", pytrace=False)
        pytest.skip(reason)


def replay(port, action):
    """Pause or resume replay on a replica, and wait until it is so."""
    with admin(port) as db:
        db.execute(f"SELECT pg_wal_replay_{action}()")
        if action == "pause":
            assert wait_until(
                lambda: (
                    db.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused"
                ),
                30,
            )


def apply_delay(port, setting):
    with admin(port) as db:
        if setting is None:
            db.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            db.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{setting}'")
        db.execute("SELECT pg_reload_conf()")


def pg_version():
    """The cluster tools' version, as .ci/setup-replicas.sh picks it (the newest)."""
    return sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[-1]


def cluster(port, action):
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), CLUSTERS[port], action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def heal():
    """Whatever a test did to the replicas, undone: running, replaying, no delay."""
    for port in CLUSTERS:
        try:
            with admin(port):
                pass
        except psycopg.OperationalError:
            cluster(port, "start")
            assert wait_until(lambda p=port: _answers(p), 60, 0.2)
        replay(port, "resume")
        apply_delay(port, None)


def _answers(port):
    try:
        with admin(port):
            return True
    except psycopg.OperationalError:
        return False


def replayed_everything(port_primary, port_replica, timeout=60):
    """Wait until the replica has replayed what its primary has written so far."""
    with admin(port_primary) as db:
        target = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with admin(port_replica) as db:
        return wait_until(
            lambda: db.execute(
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) >= 0", [target]
            ).fetchone()[0],
            timeout,
            0.02,
        )


@pytest.fixture
def replicated(replica_servers, tmp_path):
    """make(**env) -> a migrated Backend whose databases live on the primaries, with the
    replicas named by *_DATABASE_REPLICA_URLS; everything dropped and healed after."""
    created = []

    def make():
        tag = uuid.uuid4().hex[:8]
        urls = {}
        for alias, (primary, replica) in PLACES.items():
            name = f"multids_test_{tag}_{alias}"
            with admin(primary) as db:
                db.execute(sql.SQL("CREATE DATABASE {} OWNER multids").format(sql.Identifier(name)))
            created.append((primary, name))
            urls[f"{VARIABLES[alias]}_URL"] = url(primary, name)
            if replica is not None:
                urls[f"{VARIABLES[alias]}_REPLICA_URLS"] = url(replica, name)
        data_dir = tmp_path / f"data-{tag}"
        data_dir.mkdir()
        backend = Backend("postgresql", data_dir, "multids.settings", urls)
        backend.migrate()
        for primary, replica in {(p, r) for p, r in PLACES.values() if r}:
            assert replayed_everything(primary, replica)
        return backend

    try:
        yield make
    finally:
        heal()
        for port, name in created:
            with admin(port) as db:
                db.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def clients(backend, *args, env=None, **popen):
    """``python -m tests.replica_clients ARGS`` against backend, as a process."""
    return [sys.executable, "-m", "tests.replica_clients", *args], backend.env(**(env or {}))


def load_and_read(backend, tmp_path, *, causal, users=2000, orders=6000):
    """Pause the users replica, load users, products and orders while a reader loops over
    the orders on the orders replica and looks each user up; then check_integrity
    --replica. Returns (reader's summary, check's exit status, its report)."""
    reads = {"MULTIDS_CAUSAL_READS": "1" if causal else "0"}
    expect = tmp_path / f"expect-{uuid.uuid4().hex[:6]}"
    out = tmp_path / f"reader-{uuid.uuid4().hex[:6]}.json"
    replay(REPLICA_A, "pause")  # users and products: the replica shows none of the load
    with Processes() as processes:
        args, env = clients(
            backend, "reader", "--expect", str(expect), "--out", str(out), env=reads
        )
        reader = processes.start(args, env)
        load = backend.manage(
            "insert_data",
            "--users",
            str(users),
            "--products",
            "50",
            "--orders",
            str(orders),
            "--seed",
            "31",
            "--no-progress",
        )
        assert load.returncode == 0, load.stderr[-2000:]
        expect.write_text(str(backend.count("orders")))
        _out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    report_path = tmp_path / f"check-{uuid.uuid4().hex[:6]}.json"
    check = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "launch.py"),
            "check_integrity",
            "--replica",
            "--json",
            str(report_path),
        ],
        env=backend.env(**reads),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert "Traceback" not in check.stderr, check.stderr[-3000:]
    return json.loads(out.read_text()), check.returncode, json.loads(report_path.read_text())


def test_a_reader_of_the_replicas_never_sees_an_order_without_its_user(replicated, tmp_path):
    """Users' replay paused for the whole load: the orders replica shows every order, the
    users replica none of their users. Causal reads look the users up where the orders'
    watermark is replayed (here: the primary, once the 2 s wait gave up)."""
    backend = replicated()
    summary, status, report = load_and_read(backend, tmp_path, causal=True)
    print(
        f"\ncausal reads on: {summary['turns']} turns, {summary['orders_seen']} orders seen, "
        f"{summary['misses']} without their user, reads {summary['served']}; "
        f"check_integrity --replica: {report['orphan_count']} orphans"
    )
    assert summary["orders_seen"] == backend.count("orders") > 0
    assert summary["misses"] == 0, summary["examples"]
    # The orders came from the orders replica: the test is about replicas, not the primary.
    assert summary["served"].get("orders_db_replica_1", 0) > 0, summary["served"]
    assert status == 0 and report["orphan_count"] == 0, report["orphans"][:5]


def test_negative_control_without_causal_reads_the_reader_sees_orders_without_users(
    replicated, tmp_path
):
    backend = replicated()
    summary, status, report = load_and_read(backend, tmp_path, causal=False)
    print(
        f"\ncausal reads off: {summary['turns']} turns, {summary['orders_seen']} orders "
        f"seen, {summary['misses']} without their user, reads {summary['served']}; "
        f"check_integrity --replica: {report['orphan_count']} false orphans"
    )
    assert summary["orders_seen"] == backend.count("orders") > 0
    assert summary["misses"] > 0
    assert status == 1 and report["orphan_count"] > 0


# --- over HTTP: read-your-writes, and a replica stopped mid-test ---------------------------


class Browser:
    """A person's browser against the server: cookies kept, forms posted with their CSRF
    token, redirects followed; every answer's status recorded."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.statuses = []

    def open(self, path, data=None):
        body = None if data is None else urllib.parse.urlencode(data, doseq=True).encode()
        request = urllib.request.Request(self.base + path, data=body)
        if data is not None:
            request.add_header("Referer", self.base + path)
        try:
            with self.opener.open(request, timeout=60) as response:
                self.statuses.append(response.status)
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            self.statuses.append(exc.code)
            return exc.code, exc.read().decode(errors="replace")

    def csrf(self, page):
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    def login(self, username, password):
        _status, page = self.open("/admin/login/")
        status, page = self.open(
            "/admin/login/?next=/admin/",
            {"csrfmiddlewaretoken": self.csrf(page), "username": username, "password": password},
        )
        assert status == 200 and "Log out" in page, page[-1500:]

    def cookie(self, name):
        return next((c.value for c in self.jar if c.name == name), None)

    def drop_cookie(self, name):
        for c in list(self.jar):
            if c.name == name:
                self.jar.clear(c.domain, c.path, c.name)

    def save_user_name(self, pk, name):
        """Change user pk's name on its change page; return the page the redirect shows."""
        _status, page = self.open(f"/admin/core/user/{pk}/change/")
        email = re.search(r'name="email"[^>]*value="([^"]*)"', page).group(1)
        status, page = self.open(
            f"/admin/core/user/{pk}/change/",
            {"csrfmiddlewaretoken": self.csrf(page), "name": name, "email": email, "_save": "Save"},
        )
        assert status == 200 and "was changed successfully" in page, page[-2000:]
        return page

    def listed(self, path):
        """The rows of a changelist (its result table only, not the messages above it)."""
        status, page = self.open(path)
        assert status == 200, page[-2000:]
        match = re.search(r'<table id="result_list">.*?</table>', page, re.S)
        return html.unescape(match.group(0)) if match else ""


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def site(replicated, tmp_path):
    """A migrated backend with a few customers and orders, served by gunicorn on
    127.0.0.1; yields (backend, a logged-in Browser, the server's log path)."""
    backend = replicated()
    loaded = backend.manage(
        "insert_data", "--users", "30", "--products", "5", "--orders", "60", "--no-progress"
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    env = backend.env(DJANGO_SUPERUSER_PASSWORD="pw-replicas")
    made = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "staff",
            "--email",
            "staff@example.com",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    for primary, replica in ((PRIMARY_A, REPLICA_A), (PRIMARY_B, REPLICA_B)):
        assert replayed_everything(primary, replica)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "multids.wsgi",
                "--bind",
                f"{HOST}:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        browser = Browser(f"http://{HOST}:{port}")
        assert wait_until(lambda: _serves(browser), 60, 0.1), log_path.read_text()[-2000:]
        browser.login("staff", "pw-replicas")
        yield backend, browser, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _serves(browser):
    try:
        return browser.open("/admin/login/")[0] == 200
    except OSError:
        return False


def name_of(backend, pk):
    return dict(backend.query("users", "id, name"))[pk]


def test_read_your_writes_over_http_with_the_replica_delayed_by_a_second(site):
    """The save's redirect shows the new name although the users replica applies commits
    1 s late; once the replica has replayed it the cookie goes and the list is read from
    the replica again (shown by pausing it and changing the row behind the site's back)."""
    backend, browser, _log = site
    apply_delay(REPLICA_A, "1s")
    new = f"Renamed {uuid.uuid4().hex[:6]}"
    first = min(backend.ids("users"))
    page = browser.save_user_name(first, new)
    rows = html.unescape(re.search(r'<table id="result_list">.*?</table>', page, re.S).group(0))
    assert new in rows  # the next page, read while the replica is a second behind
    assert browser.cookie("crossdb_positions")
    assert new in browser.listed("/admin/core/user/")
    # Back to the replica once it has replayed the save: the cookie is dropped...
    assert wait_until(
        lambda: browser.listed("/admin/core/user/") and browser.cookie("crossdb_positions") is None,
        30,
        0.2,
    )
    apply_delay(REPLICA_A, None)
    assert replayed_everything(PRIMARY_A, REPLICA_A)
    # ... and the list comes from the replica: paused, it does not show a change made since.
    replay(REPLICA_A, "pause")
    with psycopg.connect(backend.urls["USERS_DATABASE_URL"], autocommit=True) as db:
        db.execute("UPDATE users SET name = 'Changed behind the site' WHERE id = %s", [first])
    rows = browser.listed("/admin/core/user/")
    assert new in rows and "Changed behind the site" not in rows
    assert set(browser.statuses) == {200}


def test_negative_control_without_the_positions_the_next_page_is_stale(site):
    """The same save with the users replica paused: the browser that keeps the cookie sees
    its write, the same browser without the cookie reads the replica and does not."""
    backend, browser, _log = site
    replay(REPLICA_A, "pause")
    new = f"Renamed {uuid.uuid4().hex[:6]}"
    second = sorted(backend.ids("users"))[1]
    browser.save_user_name(second, new)
    assert name_of(backend, second) == new
    assert new in browser.listed("/admin/core/user/")
    browser.drop_cookie("crossdb_positions")
    assert new not in browser.listed("/admin/core/user/")


def test_a_replica_stopped_mid_test_sends_reads_to_the_primary_within_one_request(site):
    backend, browser, log_path = site
    orders = backend.count("orders")
    assert f"{orders} orders" in browser.open("/admin/core/order/")[1]
    cluster(REPLICA_B, "stop")  # the orders replica, with the site reading from it
    for _ in range(5):
        status, page = browser.open("/admin/core/order/")
        assert status == 200 and f"{orders} orders" in page, page[-1500:]
    assert set(browser.statuses) == {200}
    said = [line for line in log_path.read_text().splitlines() if "is not used" in line]
    assert len(said) == 1 and "orders_db_replica_1" in said[0], said


def replica_row(page, alias):
    row = re.search(rf'<tr id="replica-{alias}">(.*?)</tr>', page, re.S).group(1)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", row)).split())


def test_the_overview_shows_each_replica_its_lag_and_whether_reads_use_it(site):
    backend, browser, _log = site
    replay(REPLICA_A, "pause")
    backend.manage("insert_data", "--no-progress", "--users=300", "--seed=5", check=True)
    cluster(REPLICA_B, "stop")
    status, page = browser.open("/overview/")
    assert status == 200, page[-2000:]
    users = replica_row(page, "users_db_replica_1")
    assert re.search(r"users_db .* [1-9][\d,]* bytes, [\d.]+ s \(replay paused\) used$", users), (
        users
    )
    orders = replica_row(page, "orders_db_replica_1")
    assert "unknown" in orders and "not used: unreachable" in orders, orders
    assert "reads go to orders_db" in orders, orders


def test_read_your_writes_through_the_asgi_handler(replicated):
    """The middleware in its async mode (Django's ASGI handler, AsyncClient): with the users
    replica paused, the save is read back with the cookie, and not without it."""
    backend = replicated()
    stored_parents(backend, users=5, products=1)
    replay(REPLICA_A, "pause")
    name = f"Async {uuid.uuid4().hex[:6]}"
    args, env = clients(backend, "async", "--name", name)
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"saved": 302, "with_cookie": True, "without_cookie": False}, result


# --- loaders racing deletes through the admin, replicas attached ---------------------------

ONE_BY_ONE = {"MULTIDS_LOAD_SEGMENT_MB": "0"}  # commit batch by batch, so deletes interleave


def orders_csv(directory, first_id, count, users, products, seed):
    """orders.csv in directory: count orders from first_id naming random stored parents."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "orders.csv", "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "user_id", "product_id", "quantity"])
        for i in range(first_id, first_id + count):
            out.writerow([i, rng.choice(users), rng.choice(products), rng.randint(1, 9)])


def stored_parents(backend, users=400, products=10):
    loaded = backend.manage(
        "insert_data", "--no-progress", f"--users={users}", f"--products={products}"
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    return sorted(backend.ids("users")), sorted(backend.ids("products"))


def test_loaders_racing_admin_deletes_with_replicas_attached_leave_no_orphan(replicated, tmp_path):
    """Three loaders (each a process with its own connections) load orders naming stored
    users while two staff delete users through the admin and a reader reads the replicas.
    The guard works on the primaries, so replicas change nothing: 0 orphans, on the
    primaries and on the replicas."""
    backend = replicated()
    users, products = stored_parents(backend)
    stop = tmp_path / "stop"
    expect = tmp_path / "expect"
    with Processes() as processes:
        deleters = []
        for n in range(2):
            args, env = clients(
                backend,
                "deleter",
                "--log",
                str(tmp_path / f"deletes-{n}.jsonl"),
                "--stop",
                str(stop),
                "--seed",
                str(n),
            )
            deleters.append(processes.start(args, env))
        # The loads start once the staff are deleting (a user deleted before its orders
        # land is one race, an order landing before its user's delete the other).
        assert wait_until(lambda: (tmp_path / "deletes-0.jsonl").exists(), 120)
        loaders = []
        for n in range(3):
            directory = tmp_path / f"load-{n}"
            orders_csv(directory, 10_000_000 * (n + 1), 4000, users, products, seed=n)
            loaders.append(
                processes.manage(
                    backend,
                    "insert_data",
                    "--no-progress",
                    "--from",
                    str(directory),
                    "--batch-size=100",
                    env=ONE_BY_ONE,
                )
            )
        args, env = clients(
            backend, "reader", "--expect", str(expect), "--out", str(tmp_path / "reader.json")
        )
        reader = processes.start(args, env)
        for loader in loaders:
            _out, err = loader.communicate(timeout=600)
            assert loader.returncode == 0, err[-2000:]
        # One more answer from each deleter once every order is in: a delete that must be
        # refused (every user has orders by now, or is gone).
        logs = [tmp_path / f"deletes-{n}.jsonl" for n in range(2)]

        def answers_in(log):
            return len(log.read_text().splitlines()) if log.exists() else 0

        answered = [answers_in(log) for log in logs]
        assert wait_until(
            lambda: all(answers_in(log) > n for log, n in zip(logs, answered, strict=True)), 120
        )
        stop.touch()
        expect.write_text(str(backend.count("orders")))
        for process in [*deleters, reader]:
            _out, err = process.communicate(timeout=300)
            assert process.returncode == 0 and "Traceback" not in err, err[-3000:]
    answers = [
        json.loads(line)
        for n in range(2)
        for line in (tmp_path / f"deletes-{n}.jsonl").read_text().splitlines()
    ]
    gone = set(users) - backend.ids("users")
    summary = json.loads((tmp_path / "reader.json").read_text())
    status, report = backend.check_integrity()
    for primary, replica in ((PRIMARY_A, REPLICA_A), (PRIMARY_B, REPLICA_B)):
        assert replayed_everything(primary, replica)
    on_replicas = backend.manage("check_integrity", "--replica")
    print(
        f"\n3 loaders, 2 admin deleters: {backend.count('orders')} orders stored, "
        f"{len(answers)} delete requests, {len(gone)} users deleted; reader: "
        f"{summary['misses']} misses in {summary['turns']} turns; orphans: "
        f"{report['orphan_count']} on the primaries"
    )
    assert {a["status"] for a in answers} <= {200, 302}, answers[:5]
    assert all(a.get("next_status", 200) == 200 for a in answers), answers[:5]
    # Some deletes done (302), some refused (200: the page listing the user's orders).
    assert gone and any(a["status"] == 200 for a in answers), answers[-5:]
    assert status == 0 and report["orphan_count"] == 0, report["orphans"][:5]
    assert on_replicas.returncode == 0, on_replicas.stdout[-2000:] + on_replicas.stderr[-2000:]
    assert summary["misses"] == 0, summary["examples"]


def delete_while_a_batch_holds(backend, tmp_path, *, guard):
    """A load of orders whose first batch holds (``HOLD``) after looking its users up; staff
    delete the first order's user through the admin meanwhile; the batch goes on once the
    delete waits for the guard (guard on), or once it has ended (guard off: nothing waits).
    Returns (the user, whether it is gone, orphans after)."""
    users, products = stored_parents(backend)
    directory = tmp_path / "held-load"
    # The first order's user has no other order: nothing but the held batch names it.
    user, others = users[0], users[1:]
    orders_csv(directory, 20_000_001, 599, others, products, seed=7)
    rows = (directory / "orders.csv").read_text(encoding="utf-8").splitlines()
    rows.insert(1, f"20000000,{user},{products[0]},1")
    (directory / "orders.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    hold = str(tmp_path / "hold")
    with Processes() as processes:
        load = processes.manage(
            backend,
            "insert_data",
            "--no-progress",
            "--from",
            str(directory),
            "--batch-size=200",
            guard=guard,
            env=ONE_BY_ONE | {HOLD: hold},
        )
        assert wait_until(lambda: load.poll() is not None or Path(f"{hold}.held").exists(), 120)
        assert load.poll() is None, load.communicate()[1][-2000:]
        args, env = clients(
            backend,
            "deleter",
            "--log",
            str(tmp_path / "delete.jsonl"),
            "--stop",
            str(tmp_path / "never"),
            "--user",
            str(user),
            env={} if guard else {"MULTIDS_TEST_NO_GUARD": "1"},
        )
        deleter = processes.start(args, env)
        if guard:
            # The batch goes on once the delete waits for the guard it holds (no clock).
            assert wait_until(lambda: deleter.poll() is not None or waits_for_guard(backend), 120)
            Path(f"{hold}.go").touch()
        _out, err = deleter.communicate(timeout=300)
        assert deleter.returncode == 0 and "Traceback" not in err, err[-3000:]
        Path(f"{hold}.go").touch()  # without the guard nothing waited: the batch goes on now
        _out, err = load.communicate(timeout=300)
        assert load.returncode == 0, err[-2000:]
    _status, report = backend.check_integrity()
    return user, user not in backend.ids("users"), report["orphan_count"]


def waits_for_guard(backend):
    """Whether a session waits for the guard (an advisory lock) in the orders database."""
    with psycopg.connect(backend.urls["ORDERS_DATABASE_URL"]) as db:
        return (
            db.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND l.locktype = 'advisory' AND d.datname = current_database()"
            ).fetchone()[0]
            > 0
        )


def test_an_admin_delete_waits_for_a_held_batch_and_keeps_its_orders(replicated, tmp_path):
    user, gone, orphans = delete_while_a_batch_holds(replicated(), tmp_path, guard=True)
    assert not gone and orphans == 0, (user, gone, orphans)


def test_negative_control_without_the_guard_the_admin_delete_orphans_the_held_orders(
    replicated, tmp_path
):
    user, gone, orphans = delete_while_a_batch_holds(replicated(), tmp_path, guard=False)
    assert gone and orphans > 0, (user, gone, orphans)


def test_an_action_on_a_list_read_from_a_replica_writes_to_the_primary(site):
    """The list is read from the orders replica, but "delete selected" deletes on the
    primary (a POST's queryset stays there): no write reaches a read-only replica."""
    backend, browser, _log = site
    doomed = sorted(backend.ids("orders"))[:3]
    status, page = browser.open("/admin/core/order/")
    status, page = browser.open(
        "/admin/core/order/",
        {
            "csrfmiddlewaretoken": browser.csrf(page),
            "action": "delete_selected",
            "_selected_action": doomed,
            "post": "yes",
        },
    )
    assert status == 200 and "Successfully deleted 3 orders" in page, page[-2000:]
    assert not set(doomed) & backend.ids("orders")
