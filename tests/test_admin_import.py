"""Loading from the admin (issue 33) over real HTTP: pytest-django's live server, a cookie
jar, the forms with their CSRF tokens (urllib: nothing of Django's test client).

Upload -> preview (a dry run: the counts and the first rows of each verdict with their
reasons, nothing written) -> confirm -> the load runs in a process of its own
(``crossdb.importjobs``) and the status page shows its summary -> the rows and the rejects
file are those ``insert_data`` gives on the same files (a command run on fresh SQLite
files, compared row by row). Then who may (add permission; view-only and others get 403,
anonymous the login page, another account's upload 404), CSRF, the size limits, each
hostile zip (refused whole, nothing kept, nothing written outside the upload's directory)
and hostile contents (binary garbage, a broken gzip, markup in a name: one line, escaped,
never a 500).

On SQLite and, rerun by ``tests/test_postgres.py``, on PostgreSQL: the load's process is
handed the test databases' names by the server (``job.json``).
"""

from __future__ import annotations

import csv
import gzip
import http.cookiejar
import io
import json
import re
import secrets
import sqlite3
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest
from crossdb import registry
from crossdb.loading import load
from crossdb.models import LoadRun
from crossdb.sources import source_for_path
from django.contrib.auth.models import Permission

from tests.conftest import ALL_DATABASES, ROOT, manage

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

DEMO = ROOT / "core" / "demo_data"
PASSWORD = "an-import-test-password"
DEMO_TABLES = ("users", "products", "orders")


class Browser:
    """A person's browser over HTTP: cookies, forms with the page's CSRF token, uploads."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def request(self, path, data=None, headers=None):
        """(status, body, Location) of one request, redirects not followed."""
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=120) as response:
                return response.status, response.read(), response.headers.get("Location")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Location")

    def get(self, path):
        status, body, location = self.request(path)
        return status, body.decode(errors="replace"), location

    def token(self, path):
        status, page, _ = self.get(path)
        assert status == 200, page[-2000:]
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    def post(self, path, fields, files=None, token=True):
        """POST fields (and files: {name: (filename, bytes)}) as a multipart form."""
        fields = dict(fields)
        if token:
            fields["csrfmiddlewaretoken"] = self.token(path)
        boundary = secrets.token_hex(16)
        body = io.BytesIO()
        for name, value in fields.items():
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            body.write(head.encode())
            body.write(f"{value}\r\n".encode())
        for name, (filename, content) in (files or {}).items():
            body.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            )
            body.write(content + b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        status, raw, location = self.request(path, body.getvalue(), headers)
        return status, raw.decode(errors="replace"), location

    def login(self, username):
        status, _, location = self.post(
            "/admin/login/?next=/admin/", {"username": username, "password": PASSWORD}
        )
        assert status == 302 and location.endswith("/admin/"), f"login refused: {status}"
        return self


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the test reads each redirect's Location itself


def text(page):
    return " ".join(page.split())


def zipped(members):
    """A zip of {name: bytes}; a (bytes, mode) value sets the member's Unix mode."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if isinstance(content, tuple):
                content, mode = content
                info.external_attr = mode << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def demo_zip():
    return zipped({f"demo/{t}.csv": (DEMO / f"{t}.csv").read_bytes() for t in DEMO_TABLES})


@pytest.fixture(autouse=True)
def import_settings(settings, tmp_path):
    """Uploads in a directory of the test's own; cheap password hashes."""
    settings.CROSSDB = {**settings.CROSSDB, "IMPORT_DIR": str(tmp_path / "imports")}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return tmp_path / "imports"


def uploads(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def account(django_user_model, name, *permissions, superuser=False):
    if superuser:
        return django_user_model.objects.create_superuser(name, f"{name}@example.com", PASSWORD)
    user = django_user_model.objects.create_user(name, f"{name}@example.com", PASSWORD)
    user.is_staff = True
    user.save()
    for codename in permissions:
        permission = Permission.objects.get(codename=codename, content_type__app_label="core")
        user.user_permissions.add(permission)
    return user


@pytest.fixture
def admin_browser(live_server, django_user_model):
    account(django_user_model, "admin", superuser=True)
    return Browser(live_server.url).login("admin")


def counts():
    """Rows of every registered table and of the run log."""
    found = {t: registry.spec(t).model.objects.count() for t in registry.tables()}
    return found | {"runs": LoadRun.objects.count()}


def wait_for_run(browser, status_path, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, page, _ = browser.get(status_path)
        assert status == 200, page[-3000:]
        if "(this page updates itself)" not in page:
            return text(page)
        assert '<meta http-equiv="refresh" content="1">' in page
        time.sleep(0.2)
    raise AssertionError(f"the import did not finish in {seconds} s: {text(page)[-2000:]}")


def comparable(value):
    """A value as both backends and SQLite's raw rows give it: numbers as Decimals."""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return str(value)


def rows_in_sqlite(data_dir, table):
    spec = registry.spec(table)
    filename = {"users": "users.db", "products": "products.db", "orders": "orders.db"}[table]
    with sqlite3.connect(data_dir / filename) as connection:
        columns = ", ".join(spec.fields)
        query = f"SELECT {columns} FROM {spec.model._meta.db_table} ORDER BY 1"
        return [tuple(map(comparable, row)) for row in connection.execute(query)]


def rows_in_site(table):
    spec = registry.spec(table)
    values = spec.model.objects.order_by("pk").values_list(*spec.fields)
    return [tuple(map(comparable, row)) for row in values]


def test_a_zip_is_previewed_then_loaded_as_insert_data_loads_it(
    admin_browser, import_settings, tmp_path
):
    users_only = tmp_path / "users-only"
    users_only.mkdir()
    (users_only / "users.csv").write_bytes((DEMO / "users.csv").read_bytes())
    load.load(source_for_path(users_only))  # the customers are there already
    before = counts()

    status, page, location = admin_browser.post(
        "/imports/new/", {}, {"file": ("my directory.zip", demo_zip())}
    )
    assert status == 302, text(page)[-2000:]
    token = re.fullmatch(r"/imports/([0-9a-f]{32})/", location).group(1)
    status, page, _ = admin_browser.get(location)
    assert status == 200, text(page)[-3000:]
    shown = text(page)
    for table, numbers in {"users": (0, 8, 2), "products": (9, 0, 1), "orders": (7, 0, 3)}.items():
        cells = "".join(f"<td>{n}</td>" for n in numbers)
        assert f'<tr id="counts-{table}"><td>{table}</td>{cells}</tr>' in shown
    assert "email &#x27;alice@example.com&#x27; is already used by customer 1" in shown
    assert "name is required" in shown
    assert "price must be greater than 0 (got -50.00)" in shown
    assert "customer 10 was rejected in this run; product 11 does not exist" in shown
    assert "<td>already present</td><td>1</td><td>Alice</td><td>alice@example.com</td>" in shown
    assert "<td>would store</td><td>1</td><td>Laptop</td><td>1000.00</td>" in shown
    assert counts() == before  # the preview wrote nothing, not even a run

    status, page, location = admin_browser.post(location, {})
    assert (status, location) == (302, f"/imports/{token}/status/"), text(page)[-2000:]
    summary = wait_for_run(admin_browser, location)
    assert "16 stored, 8 already present, 6 rejected." in summary, summary[-2000:]
    assert '<tr id="run-orders"><td>orders</td><td>7</td><td>0</td><td>3</td></tr>' in summary
    run = LoadRun.objects.get()
    assert run.status == LoadRun.DONE and run.source.startswith("admin import of my directory.zip")
    # Confirm again (a second tab, a double click): nothing starts, back to the status page
    status, _, location = admin_browser.request(f"/imports/{token}/", b"", {})
    assert status == 403  # no token: CSRF
    assert admin_browser.get(f"/imports/{token}/")[2] == f"/imports/{token}/status/"
    assert LoadRun.objects.count() == 1

    status, raw, _ = admin_browser.request(f"/imports/{token}/rejects.csv")
    assert status == 200
    imported_rejects = raw.decode()

    # The command on the same files, on fresh SQLite files, in a process of its own.
    data_dir = tmp_path / "command"
    data_dir.mkdir()
    assert manage("migrate_all", data_dir=data_dir).returncode == 0
    assert manage("insert_data", "--from", users_only, data_dir=data_dir).returncode == 0
    rejects = tmp_path / "command-rejects.csv"
    report = tmp_path / "command-report.json"
    done = manage(
        "insert_data", "--from", DEMO, "--rejects", rejects, "--report", report, data_dir=data_dir
    )
    assert done.returncode == 0, done.stderr
    command = json.loads(report.read_text())
    verdicts = ("read", "stored", "already_present", "rejected")
    for table in DEMO_TABLES:
        assert [command["tables"][table][k] for k in verdicts] == [
            run.summary["tables"][table][k] for k in verdicts
        ], table
    assert list(csv.reader(io.StringIO(imported_rejects))) == list(
        csv.reader(io.StringIO(rejects.read_text()))
    )
    for table in DEMO_TABLES:
        assert rows_in_site(table) == rows_in_sqlite(data_dir, table), table


def test_a_table_file_needs_the_add_permission_of_its_table(
    live_server, django_user_model, import_settings
):
    account(django_user_model, "adder", "add_user", "view_user")
    account(django_user_model, "viewer", "view_user", "view_order", "view_product")
    adder = Browser(live_server.url).login("adder")
    viewer = Browser(live_server.url).login("viewer")

    status, page, _ = adder.get("/admin/core/user/")
    assert status == 200 and 'id="import-link"' in page
    status, page, _ = viewer.get("/admin/core/user/")
    assert status == 200 and 'id="import-link"' not in page
    users = (DEMO / "users.csv").read_bytes()
    for browser, path, expected in (
        (viewer, "/admin/core/user/import/", 403),
        (viewer, "/imports/new/", 403),
        (adder, "/admin/core/order/import/", 403),
        (adder, "/admin/core/user/import/", 200),  # the negative control
        (adder, "/imports/new/", 200),
    ):
        assert browser.get(path)[0] == expected, path
    status, _, location = adder.post(
        "/admin/core/user/import/", {}, {"file": ("customers.CSV", users)}
    )
    assert status == 302
    assert adder.get(location)[0] == 200
    anonymous = Browser(live_server.url)
    status, _, login = anonymous.get(location)
    assert status == 302 and login.startswith("/admin/login/")
    assert viewer.get(location)[0] == 404  # not the viewer's upload
    # a zip holding a table the account may not add to: refused, nothing kept
    status, page, _ = adder.post("/imports/new/", {}, {"file": ("all.zip", demo_zip())})
    assert status == 403
    assert len(uploads(import_settings)) == 1  # the users upload only


def test_a_post_without_the_csrf_token_is_refused(admin_browser, import_settings):
    files = {"file": ("users.csv", (DEMO / "users.csv").read_bytes())}
    status, page, _ = admin_browser.post("/admin/core/user/import/", {}, files, token=False)
    assert status == 403 and "CSRF" in page
    assert uploads(import_settings) == []
    status, _, _ = admin_browser.post("/admin/core/user/import/", {}, files)  # with it
    assert status == 302 and len(uploads(import_settings)) == 1


def test_uploads_over_the_limit_are_refused_with_413(admin_browser, import_settings, settings):
    settings.CROSSDB = {**settings.CROSSDB, "IMPORT_MAX_BYTES": 2000}
    header = b"id,name,email\n"
    small = header + b"".join(b"%d,N%d,n%d@example.com\n" % (i, i, i) for i in range(1, 40))
    over = header + b"".join(b"%d,N%d,n%d@example.com\n" % (i, i, i) for i in range(1, 100))
    huge = over * 40  # its Content-Length alone is refused, before the body is read
    assert len(small) < 2000 < len(over) < 2000 + 64 * 1024 < len(huge)
    for content in (over, huge):
        status, page, _ = admin_browser.post(
            "/admin/core/user/import/", {}, {"file": ("users.csv", content)}
        )
        assert status == 413, status
        assert "The upload is larger than 2,000 bytes" in text(page)
    assert uploads(import_settings) == []
    status, page, _ = admin_browser.post(
        "/admin/core/user/import/", {}, {"file": ("users.csv", small)}
    )
    assert status == 302, text(page)[-1000:]


def _hostile_zips():
    users = (DEMO / "users.csv").read_bytes()
    bomb = gzip.compress(b"0" * 3_000_000)
    return {
        "traversal": (zipped({"../users.csv": users}), 400, "a path outside its directory"),
        "absolute": (zipped({"/tmp/users.csv": users}), 400, "a path outside its directory"),
        "windows": (zipped({"..\\users.csv": users}), 400, "a path outside its directory"),
        "symlink": (
            zipped({"users.csv": (b"/etc/passwd", stat.S_IFLNK | 0o777)}),
            400,
            "a symbolic link",
        ),
        "bomb": (zipped({"users.csv": b"0" * 3_000_000}), 413, "unpacks to more than"),
        "gzip bomb": (zipped({"users.csv.gz": bomb}), 413, "unpacks to more than"),
        "members": (
            zipped({f"notes{i}.txt": b"x" for i in range(12)}),
            413,
            "more than 10 (CROSSDB[&#x27;IMPORT_MAX_MEMBERS&#x27;])",
        ),
        "not a zip": (b"PK\x03\x04 but nothing more" * 10, 400, "not a zip file"),
        "no table": (
            zipped({"notes.txt": b"x", "a/b/users.csv": users}),
            400,
            "holds no file named for a table",
        ),
        "two for one table": (
            zipped({"users.csv": users, "users.jsonl": b"{}"}),
            400,
            "two files for users",
        ),
    }


@pytest.mark.parametrize("kind", list(_hostile_zips()))
def test_each_hostile_zip_is_refused_whole(
    kind, admin_browser, import_settings, settings, tmp_path
):
    settings.CROSSDB = {
        **settings.CROSSDB,
        "IMPORT_MAX_UNPACKED_BYTES": 1_000_000,
        "IMPORT_MAX_MEMBERS": 10,
    }
    content, expected, words = _hostile_zips()[kind]
    before = counts()
    status, page, _ = admin_browser.post("/imports/new/", {}, {"file": ("x.zip", content)})
    assert status == expected, text(page)[-1500:]
    error = re.search(r'<p id="import-error" class="errornote">(.*?)</p>', page, re.S).group(1)
    assert words in error and "\n" not in error.strip()
    assert uploads(import_settings) == []  # nothing kept
    assert not (tmp_path / "users.csv").exists() and not Path("/tmp/users.csv").exists()
    assert counts() == before


def test_a_clean_zip_is_taken_and_its_other_files_listed(admin_browser, settings):
    """The negative control of the hostile zips: the same limits, an ordinary zip."""
    settings.CROSSDB = {**settings.CROSSDB, "IMPORT_MAX_UNPACKED_BYTES": 1_000_000}
    users = (DEMO / "users.csv").read_bytes()
    content = zipped({"data/users.csv": users, "data/notes.txt": b"x", "data/a/orders.csv": b"x"})
    status, page, location = admin_browser.post("/imports/new/", {}, {"file": ("x.zip", content)})
    assert status == 302, text(page)[-1500:]
    page = text(admin_browser.get(location)[1])
    assert "Ignored (named for no table): data/notes.txt, data/a/orders.csv" in page
    assert '<tr id="counts-users"><td>users</td><td>8</td><td>0</td><td>2</td></tr>' in page


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("users.csv", bytes(range(256)) * 40),
        ("users.csv", b"id,name,email\n" + bytes(range(256)) * 40),
        ("users.csv.gz", b"\x1f\x8b\x08\x00 not really gzip" * 20),
        ("users.jsonl", b"{not json\n\xff\xfe\n"),
    ],
)
def test_garbage_gets_the_loaders_one_line_never_a_500(name, content, admin_browser):
    status, page, location = admin_browser.post(
        "/admin/core/user/import/", {}, {"file": (name, content)}
    )
    assert status == 302, text(page)[-1500:]
    status, page, _ = admin_browser.get(location)
    assert status in (200, 400), text(page)[-1500:]
    assert "Traceback" not in page
    if status == 400:  # the loader stopped before any row: its one line, no Confirm
        error = re.search(r'<p id="import-error" class="errornote">(.*?)</p>', page, re.S)
        assert error and error.group(1).strip() and "\n" not in error.group(1).strip()
        assert 'id="confirm"' not in page
    else:  # every row rejected with its reason
        assert '<tr class="rejected">' in page and 'id="confirm"' in page
    assert counts()["users"] == 0


def test_a_name_in_the_upload_is_shown_escaped(admin_browser):
    content = (
        b'id,name,email\n1,"<script>alert(1)</script>",not-an-email\n2,<b>Bo</b>,b@example.com\n'
    )
    status, page, location = admin_browser.post(
        "/admin/core/user/import/", {}, {"file": ("<img src=x>.csv", content)}
    )
    assert status == 302
    page = admin_browser.get(location)[1]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "&lt;b&gt;Bo&lt;/b&gt;" in page and "<b>Bo</b>" not in page
    assert "&lt;img src=x&gt;.csv" in page and "<img src=x>" not in page


def test_a_file_in_no_format_the_loader_reads_is_refused(admin_browser, import_settings):
    status, page, _ = admin_browser.post(
        "/admin/core/user/import/", {}, {"file": ("users.txt", b"id,name,email\n")}
    )
    assert status == 400
    assert (
        "is not a file the loader reads: give a .csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx file"
        in (text(page))
    )
    assert uploads(import_settings) == []


def test_the_status_page_shows_progress_from_the_record_then_a_dead_process(admin_browser):
    """The page reads the run's record: progress while it runs (and reloads itself); a run
    whose process is gone without closing its record is said to have failed."""
    import os
    import subprocess
    import sys

    from crossdb import imports, runs

    status, _, location = admin_browser.post(
        "/admin/core/user/import/", {}, {"file": ("users.csv", (DEMO / "users.csv").read_bytes())}
    )
    token = location.strip("/").split("/")[-1]
    upload = imports.find(token)
    run = runs.begin("a run in progress")
    progress = runs.RunProgress(run.pk, interval=3600)
    progress.start("users")
    progress.advance("users", read=4, written=3)  # within the interval: not written yet
    assert LoadRun.objects.get(pk=run.pk).progress == {
        "users": {"read": 0, "written": 0, "fraction": None}
    }
    progress.flush()
    upload.meta |= {"run": run.pk, "pid": os.getpid()}  # alive: this process
    upload.save()
    page = admin_browser.get(f"/imports/{token}/status/")[1]
    assert '<meta http-equiv="refresh" content="1">' in page
    assert '<tr id="run-users"><td>users</td><td>4</td><td>3</td><td></td></tr>' in text(page)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    upload.meta["pid"] = int(ended.stdout)  # a process that has ended
    upload.save()
    page = text(admin_browser.get(f"/imports/{token}/status/")[1])
    assert "the load&#x27;s process ended without finishing" in page
    assert LoadRun.objects.get(pk=run.pk).status == LoadRun.FAILED


def test_every_registered_table_has_an_import_page(admin_browser):
    """From the registry, not from the shop: the test settings' reviews and kinds too."""
    from django.contrib import admin as django_admin

    for model in registry.models().values():
        if django_admin.site.is_registered(model):
            opts = model._meta
            path = f"/admin/{opts.app_label}/{opts.model_name}/import/"
            status, page, _ = admin_browser.get(path)
            assert status == 200 and 'id="import-form"' in page, path


def test_the_import_directory_is_never_one_a_web_server_publishes(settings, tmp_path):
    from crossdb import imports
    from django.core.exceptions import ImproperlyConfigured

    settings.STATIC_ROOT = str(tmp_path / "static")
    settings.CROSSDB = {**settings.CROSSDB, "IMPORT_DIR": str(tmp_path / "static" / "up")}
    with pytest.raises(ImproperlyConfigured, match="lies in STATIC_ROOT"):
        imports.root()
    settings.CROSSDB = {**settings.CROSSDB, "IMPORT_DIR": str(tmp_path / "private")}
    assert imports.root() == (tmp_path / "private").resolve()  # the negative control
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
