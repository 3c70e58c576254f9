"""The production command of docs/production.md (linked from the README), run as written:
gunicorn serves the site (production settings: a secret key and a public host, behind an
HTTPS proxy), WhiteNoise its static files, and a failed login through it is logged with its
account and address."""

import http.client
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, manage

HOST = "shop.example.com"
PRODUCTION_PAGE = ROOT / "docs" / "production.md"
START_SECONDS = 60  # a bound on the start-up, not a measure: a busy machine may take long


def readme_command(name):
    """The command line of docs/production.md that runs name (``python -m gunicorn ...``), as
    words."""
    lines = [
        line.split("#")[0].strip()
        for line in PRODUCTION_PAGE.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith(f"python -m {name} ")
    ]
    assert len(lines) == 1, f"docs/production.md should name one {name} command: {lines}"
    return shlex.split(lines[0])


@pytest.fixture
def server(migrated_dir, tmp_path):
    """The documented gunicorn command on a free port of 127.0.0.1; yields (port, its log)."""
    pytest.importorskip("gunicorn", reason="the serve extra: pip install -e '.[serve]'")
    env = {
        "DJANGO_SECRET_KEY": "multids-serve-test-" + "s" * 40,
        "DJANGO_ALLOWED_HOSTS": HOST,  # a public host: production without being told
        "MULTIDS_HTTPS_PROXY": "1",
        "MULTIDS_STATIC_ROOT": str(tmp_path / "static"),
        "MULTIDS_PRODUCTION": "",
        "MULTIDS_DEBUG": "",
    }
    collected = manage("collectstatic", "--noinput", data_dir=migrated_dir, env=env)
    assert collected.returncode == 0, collected.stderr
    words = readme_command("gunicorn")
    bind = words.index("--bind") + 1
    words[bind] = "127.0.0.1:0"  # the documented 8000 may be taken; the log says which port
    log_path = tmp_path / "gunicorn.log"
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment |= env | {
        "MULTIDS_DATA_DIR": str(migrated_dir),
        "DJANGO_SETTINGS_MODULE": "multids.settings",
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, *words[1:]], cwd=ROOT, env=environment, stdout=log, stderr=log
        )
    try:
        yield wait_for_port(process, log_path), log_path
    finally:
        process.terminate()  # SIGTERM: gunicorn stops its workers and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(process, log_path):
    """The port gunicorn says it listens on, once a worker answers."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found and "Booting worker" in log_path.read_text():
            try:
                request(int(found[1]), "GET", "/admin/login/")
                return int(found[1])
            except ConnectionError:
                pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer within {START_SECONDS} s:\n{log_path.read_text()}")


def request(port, method, path, *, https=True, headers=None, body=None):
    """One request to the server as the HTTPS proxy would forward it; (response, text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = {"Host": HOST} | ({"X-Forwarded-Proto": "https"} if https else {})
        connection.request(method, path, body=body, headers=sent | (headers or {}))
        response = connection.getresponse()
        return response, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_the_readme_command_serves_the_site_and_its_static_files(server):
    port, log_path = server
    page, text = request(port, "GET", "/admin/login/")
    assert page.status == 200 and "multids administration" in text
    assert page.getheader("Strict-Transport-Security").startswith("max-age=31536000")
    assert "default-src 'self'" in page.getheader("Content-Security-Policy")
    css, text = request(port, "GET", "/static/admin/css/base.css")
    assert css.status == 200 and css.getheader("Content-Type").startswith("text/css")
    assert "body" in text
    plain, _ = request(port, "GET", "/admin/login/", https=False)
    assert plain.status == 301 and plain.getheader("Location") == f"https://{HOST}/admin/login/"


def test_a_failed_login_through_the_server_is_logged(server):
    port, log_path = server
    page, text = request(port, "GET", "/admin/login/")
    cookie = page.getheader("Set-Cookie").split(";")[0]  # csrftoken=...
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text)[1]
    form = f"csrfmiddlewaretoken={token}&username=mallory&password=guess&next=/admin/"
    refused, text = request(
        port,
        "POST",
        "/admin/login/",
        body=form,
        headers={
            "Cookie": cookie,
            "Origin": f"https://{HOST}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert refused.status == 200 and "Please enter the correct username and password" in text
    assert "login failed: account 'mallory' from 127.0.0.1" in log_path.read_text()
