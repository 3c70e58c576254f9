"""The second project as proof (issue 29): ``examples/library`` runs on django-crossdb
installed as a wheel of its own in a fresh virtualenv, with nothing of the shop around.

One wheel and one virtualenv per session (``crossdb_venv``); one set of databases for the
module (``library``), which the tests below take through its life in order: migrate_all,
a load with rejections, the same load again, a delete racing a held load (guard on, then
the negative control with the guard off), check_integrity's exit codes and the admin's
pages over HTTP (``runserver`` in the virtualenv, a staff login through the form).
Each test is one step; a step whose earlier step failed is skipped, so the first failure
names the piece that broke.

The races are ordered by the hold files of ``tests/launch.py`` (``MULTIDS_TEST_HOLD``), not
by sleeps: the load has looked its member up and holds its transaction open before the
delete starts; the guard-off delete ends before the load is let go.
"""

import csv
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "library"
LAUNCH = ROOT / "tests" / "launch.py"
SETTINGS = "librarysite.settings"
ADMIN_PASSWORD = "library-example-test-password"

ADA = "7f6c1a3e-2b4d-4c8e-9f10-000000000001"
BARBARA = "7f6c1a3e-2b4d-4c8e-9f10-000000000004"  # no loans in data/: raced with the guard on
DONALD = "7f6c1a3e-2b4d-4c8e-9f10-000000000005"  # the same, with deferred transactions
EDSGER = "7f6c1a3e-2b4d-4c8e-9f10-000000000006"  # the negative control (guard off)
HEAD_FIRST = "9780596007126"

# The settings of the guard-off negative control and of its guard-on twin. On SQLite, a
# deleter's BEGIN IMMEDIATE on loans.db waits for the held load's write lock with or
# without the guard (the lock is the guard there), so both runs open their transactions
# deferred: the only difference between them is the guard.
DEFERRED_SETTINGS = """\
from librarysite.settings import *  # noqa: F403

for _config in DATABASES.values():  # noqa: F405
    _config["OPTIONS"].pop("transaction_mode")
SILENCED_SYSTEM_CHECKS = ["crossdb.W001"]
"""


class AdminBrowser:
    """A staff member's browser over real HTTP: a cookie jar, the login form with its CSRF
    token, then plain GETs (urllib, so nothing of Django's test client is involved)."""

    def __init__(self, base):
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path):
        try:
            with self.opener.open(self.base + path, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def login(self, username, password):
        status, page = self.get("/admin/login/?next=/admin/")
        assert status == 200, page[-2000:]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token, "username": username, "password": password}
        ).encode()
        request = urllib.request.Request(
            self.base + "/admin/login/?next=/admin/",
            data=form,
            headers={"Referer": self.base + "/admin/login/"},
        )
        with self.opener.open(request, timeout=60) as response:
            assert response.url.endswith("/admin/"), f"login refused: {response.url}"


def _listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, *, env=None, cwd=None, timeout=300):
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def said(done):
    return f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- the wheel and the virtualenv, once per session ------------------------------------------


@pytest.fixture(scope="session")
def crossdb_wheel(tmp_path_factory):
    """django-crossdb built as a wheel of its own, from a clean copy of its directory (a
    build/ left in the work tree could carry stale modules into it)."""
    import shutil

    base = tmp_path_factory.mktemp("crossdb-wheel")
    source = base / "django-crossdb"
    shutil.copytree(
        ROOT / "django-crossdb",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "dist"),
    )
    done = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", source, "-w", base],
        timeout=600,
    )
    assert done.returncode == 0, said(done)
    (wheel,) = base.glob("django_crossdb-*.whl")
    return wheel


@pytest.fixture(scope="session")
def crossdb_venv(tmp_path_factory, crossdb_wheel):
    """A fresh virtualenv with the wheel and its declared dependencies alone; its python."""
    venv = tmp_path_factory.mktemp("crossdb-venv") / "venv"
    done = run([sys.executable, "-m", "venv", venv], timeout=300)
    assert done.returncode == 0, said(done)
    python = venv / "bin" / "python"
    done = run([python, "-m", "pip", "install", "--quiet", crossdb_wheel], timeout=600)
    assert done.returncode == 0, said(done)
    return python


class Library:
    """The example project's databases in a data directory of their own, and its commands
    run with the virtualenv's python from examples/library."""

    def __init__(self, python, data_dir):
        self.python = python
        self.data_dir = data_dir
        self.done = set()  # the steps that passed
        (data_dir / "settings").mkdir()
        (data_dir / "settings" / "deferred_settings.py").write_text(DEFERRED_SETTINGS)

    def need(self, *steps):
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.skip(f"needs the step(s) {', '.join(missing)}, which failed or did not run")

    def env(self, *, deferred=False, **extra):
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONHOME")
            and not k.startswith(("MULTIDS_", "LIBRARY_"))
        }
        environment |= {
            "LIBRARY_DATA_DIR": str(self.data_dir),
            "DJANGO_SETTINGS_MODULE": "deferred_settings" if deferred else SETTINGS,
        }
        if deferred:
            environment["PYTHONPATH"] = str(self.data_dir / "settings")
        return environment | {k: str(v) for k, v in extra.items()}

    def manage(self, *args, deferred=False, timeout=300, **extra):
        """``manage.py ARGS`` through tests/launch.py (which sets crossdb's test hooks)."""
        return run(
            [self.python, LAUNCH, *args],
            env=self.env(deferred=deferred, **extra),
            cwd=EXAMPLE,
            timeout=timeout,
        )

    def start(self, *args, deferred=False, **extra):
        return subprocess.Popen(
            [str(self.python), str(LAUNCH), *map(str, args)],
            env=self.env(deferred=deferred, **extra),
            cwd=EXAMPLE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def check_integrity(self, deferred=False):
        report = self.data_dir / f"integrity-{time.monotonic_ns()}.json"
        done = self.manage("check_integrity", "--json", report, deferred=deferred)
        assert "Traceback" not in done.stderr, said(done)
        return done, json.loads(report.read_text())

    def race(self, member, loan, *, guard, deferred):
        """Load one loan of member (stored earlier) and hold it once the member has been
        looked up; then run delete_row members MEMBER. With the guard on, the load is let
        go while the delete waits (it cannot end before); with it off, once the delete has
        ended. Return (delete, load) as CompletedProcess."""
        directory = self.data_dir / f"race-{loan}"
        directory.mkdir()
        with open(directory / "loans.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "member", "book", "lent_on", "due_on", "returned"])
            writer.writerow([loan, member, HEAD_FIRST, "2024-06-01", "2024-06-29", "false"])
        hold = directory / "hold"
        switches = {} if guard else {"MULTIDS_TEST_NO_GUARD": "1"}
        load = self.start(
            "insert_data",
            "--no-progress",
            "--from",
            directory,
            deferred=deferred,
            MULTIDS_TEST_HOLD=hold,
            **switches,
        )
        delete = None
        try:
            held = Path(f"{hold}.held")
            assert wait_until(lambda: held.exists() or load.poll() is not None, 120), "no hold"
            assert load.poll() is None, "the load ended before it held: " + load.stderr.read()
            delete = self.start("delete_row", "members", member, deferred=deferred, **switches)
            if guard:
                # It waits for the load's transaction: it cannot end while the load holds.
                ended_early = wait_until(lambda: delete.poll() is not None, 1.5)
                Path(f"{hold}.go").touch()
                assert not ended_early, "the delete ended while the load held its member"
            else:
                assert wait_until(lambda: delete.poll() is not None, 120), "the delete hung"
                Path(f"{hold}.go").touch()
            delete_out, delete_err = delete.communicate(timeout=120)
            load_out, load_err = load.communicate(timeout=120)
        finally:
            for process in (load, delete):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        return (
            subprocess.CompletedProcess(delete.args, delete.returncode, delete_out, delete_err),
            subprocess.CompletedProcess(load.args, load.returncode, load_out, load_err),
        )


@pytest.fixture(scope="module")
def library(tmp_path_factory, crossdb_venv):
    return Library(crossdb_venv, tmp_path_factory.mktemp("library-data"))


# --- the pieces, in order ---------------------------------------------------------------------


def test_the_wheel_holds_crossdb_alone(crossdb_wheel):
    names = zipfile.ZipFile(crossdb_wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"crossdb", "django_crossdb-0.1.0.dist-info"}, tops
    for present in (
        "crossdb/migrations/0001_initial.py",
        "crossdb/templates/crossdb/overview.html",
        "crossdb/management/commands/insert_data.py",
        "crossdb/py.typed",
    ):
        assert present in names
    assert not [n for n in names if n.split("/")[0] in ("core", "multids", "tests", "examples")]
    metadata = zipfile.ZipFile(crossdb_wheel).read("django_crossdb-0.1.0.dist-info/METADATA")
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in requires) == [
        "Django",
        "numpy",
        "rich",
    ], requires


def test_the_example_imports_nothing_of_the_shop():
    for path in EXAMPLE.rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]):
                module = words[1].split(".")[0]
                assert module not in ("core", "multids", "tests"), f"{path}: {line}"


def test_the_virtualenv_has_crossdb_from_the_wheel_and_no_shop(crossdb_venv, tmp_path):
    probe = (
        "import importlib.util, crossdb, django\n"
        "print(crossdb.__file__)\n"
        "print([m for m in ('core', 'multids', 'tests', 'psycopg') "
        "if importlib.util.find_spec(m)])\n"
    )
    done = run([crossdb_venv, "-c", probe], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, said(done)
    where, found = done.stdout.splitlines()
    assert Path(where).is_relative_to(crossdb_venv.parent.parent), where
    assert found == "[]", found


def test_migrate_all_creates_each_table_in_its_database(library):
    done = library.manage("migrate_all")
    assert done.returncode == 0, said(done)
    for alias, table in (
        ("members_db", "members"),
        ("books_db", "books"),
        ("loans_db", "loans"),
        ("reviews_db", "reviews"),
    ):
        line = next(line for line in done.stdout.splitlines() if line.startswith(alias))
        assert table in done.stdout.split(alias, 1)[1].split("_db", 1)[0], (alias, line)
    assert "All databases migrated." in done.stdout
    for name in ("default", "members", "books", "loans", "reviews"):
        assert (library.data_dir / f"{name}.db").exists()
    library.done.add("migrate")


REJECTIONS = [  # (table, a piece of the reason)
    ("members", "id must be a UUID (got 'not-a-uuid')"),
    ("members", "joined is not a real date (got '2023-02-30')"),
    ("members", f"id {ADA} is already stored with different data"),
    ("books", "year must be at least 1450 (got 1200)"),
    ("books", "isbn is longer than 13 characters"),
    ("loans", "member 7f6c1a3e-2b4d-4c8e-9f10-0000000000ff does not exist"),
    ("loans", "book 9789999999999 does not exist"),
    ("loans", "lent_on is not a real date (got '2024-13-01')"),
    ("loans", "returned must be true or false (got 'maybe')"),
    ("loans", "member 7f6c1a3e-2b4d-4c8e-9f10-000000000007 was rejected in this run"),
    ("loans", "id 1 is already stored with different data"),
    ("reviews", "loan 99 does not exist"),
    ("reviews", "rating must be at most 5 (got 6)"),
    ("reviews", "written_at needs its time zone"),
    ("reviews", "book 9780000000001 was rejected in this run"),
]
STORED = {"members": 6, "books": 4, "loans": 4, "reviews": 3}


def load_data(library, name):
    report = library.data_dir / f"{name}.json"
    rejects = library.data_dir / f"{name}-rejects.csv"
    done = library.manage(
        "insert_data", "--from", "data/", "--no-progress", "--report", report, "--rejects", rejects
    )
    assert done.returncode == 0, said(done)
    with open(rejects, newline="", encoding="utf-8") as handle:
        rejected = [(row["table"], row["reason"]) for row in csv.DictReader(handle)]
    return done, json.loads(report.read_text())["tables"], rejected


def test_a_load_stores_the_valid_rows_and_rejects_the_others_with_reasons(library):
    library.need("migrate")
    done, tables, rejected = load_data(library, "first")
    assert {t: tables[t]["stored"] for t in STORED} == STORED, tables
    assert sum(t["already_present"] for t in tables.values()) == 0, tables
    assert sum(t["rejected"] for t in tables.values()) == len(REJECTIONS) == len(rejected)
    for table, reason in REJECTIONS:
        assert any(t == table and reason in r for t, r in rejected), (table, reason, rejected)
        assert reason in done.stdout, reason
    assert "17 stored, 0 already present, 15 rejected" in done.stdout
    library.done.add("load")


def test_the_same_load_again_finds_every_row_already_present(library):
    library.need("load")
    done, tables, rejected = load_data(library, "second")
    assert {t: tables[t]["already_present"] for t in STORED} == STORED, tables
    assert sum(t["stored"] for t in tables.values()) == 0, tables
    assert len(rejected) == len(REJECTIONS)
    assert "0 stored, 17 already present, 15 rejected" in done.stdout
    integrity, report = library.check_integrity()
    assert integrity.returncode == 0 and report["orphan_count"] == 0, said(integrity)
    assert "Integrity holds." in integrity.stdout
    library.done.add("reload")


def test_delete_row_and_check_integrity_exit_codes(library):
    library.need("reload")
    refused = library.manage("delete_row", "members", ADA)
    assert refused.returncode == 1, said(refused)
    assert f"member {ADA} has 2 loans" in refused.stderr
    unknown = library.manage("delete_row", "members", "7f6c1a3e-2b4d-4c8e-9f10-0000000000ee")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr, said(unknown)
    integrity, _report = library.check_integrity()
    assert integrity.returncode == 0, said(integrity)
    library.done.add("delete")


@pytest.mark.parametrize(
    ("member", "loan", "deferred"),
    [(BARBARA, 100, False), (DONALD, 101, True)],
    ids=["immediate-transactions", "deferred-transactions"],
)
def test_a_delete_racing_a_held_load_waits_and_refuses(library, member, loan, deferred):
    """The load has looked the member up and holds; the delete waits for it, then sees the
    loan committed and refuses (PROTECT). Nothing is orphaned."""
    library.need("reload")
    delete, load = library.race(member, loan, guard=True, deferred=deferred)
    assert load.returncode == 0 and "1 stored" in load.stdout, said(load)
    assert delete.returncode == 1, said(delete)
    assert f"member {member} has 1 loan" in delete.stderr, said(delete)
    integrity, report = library.check_integrity(deferred=deferred)
    assert integrity.returncode == 0 and report["orphan_count"] == 0, said(integrity)
    library.done.add(f"race-{loan}")


def test_the_admin_lists_and_confirms_deletes_over_http(library, tmp_path):
    library.need("reload")
    done = library.manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "librarian",
        "--email",
        "librarian@example.org",
        DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD,
    )
    assert done.returncode == 0, said(done)
    urls = {
        "members": "/admin/library/member/",
        "books": "/admin/library/book/",
        "loans": "/admin/library/loan/",
        "reviews": "/admin/library/review/",
        "member": f"/admin/library/member/{ADA}/change/",
        "book": f"/admin/library/book/{HEAD_FIRST}/change/",
        "add book": "/admin/library/book/add/",
        "add member": "/admin/library/member/add/",
        "delete member": f"/admin/library/member/{ADA}/delete/",
        "delete book": "/admin/library/book/9780262033848/delete/",
        "overview": "/overview/",
    }
    port = free_port()
    log = tmp_path / "runserver.log"
    server = subprocess.Popen(
        [str(library.python), "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=library.env(),
        cwd=EXAMPLE,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        browser = AdminBrowser(f"http://127.0.0.1:{port}")
        assert wait_until(lambda: _listening(port) or server.poll() is not None, 120)
        assert server.poll() is None, log.read_text()[-3000:]
        browser.login("librarian", ADMIN_PASSWORD)
        pages = {url: browser.get(url) for url in urls.values()}
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, url in urls.items():
        assert pages[url][0] == 200, (name, pages[url][1][-2000:])
    text = {name: pages[url][1] for name, url in urls.items()}
    assert "Ada Lovelace" in text["members"] and "Barbara Liskov" in text["members"]
    assert "Introduction to Algorithms" in text["books"]
    # a loan's member and book are read from their databases and linked
    assert f"/admin/library/member/{ADA}/change/" in text["loans"]
    assert "Ada Lovelace" in text["loans"] and "Introduction to Algorithms" in text["loans"]
    assert "Heavy, but everything is in it." in text["reviews"]
    assert ADA in text["member"] and HEAD_FIRST in text["book"]
    # the delete pages say what keeps the row and what would go with it
    assert f"Member {ADA} has 2 loans" in text["delete member"]
    assert "loans_db" in text["delete member"]
    assert "has 1 loan" in text["delete book"] and "review" in text["delete book"]
    for alias in ("members_db", "books_db", "loans_db", "reviews_db"):
        assert alias in text["overview"]
    library.done.add("admin")


def test_negative_control_without_the_guard_the_delete_orphans_the_held_loan(library):
    """The same race as the deferred-transactions one, with the guard switched off: the
    delete does not wait, the member goes, the held load commits its loan, and
    check_integrity finds the orphan (exit 1)."""
    library.need("reload")
    delete, load = library.race(EDSGER, 102, guard=False, deferred=True)
    assert delete.returncode == 0 and f"deleted member {EDSGER}" in delete.stdout, said(delete)
    assert load.returncode == 0 and "1 stored" in load.stdout, said(load)
    integrity, report = library.check_integrity(deferred=True)
    assert integrity.returncode == 1, said(integrity)
    assert report["orphan_count"] == 1, report
    assert f"member {EDSGER} not found" in integrity.stdout, said(integrity)
    assert "integrity check failed: 1 orphaned row(s)" in integrity.stderr
