"""Production settings pass Django's deployment checklist, unsafe mixes are refused (debug in
production, a missing or public SECRET_KEY), a 500 is logged in every mode, the debug page
hides database URLs, and every page sends a Content-Security-Policy."""

import os
import secrets
import subprocess
import sys

import pytest
from django.views.debug import ExceptionReporter

from core.security import hide_url_passwords
from tests.conftest import ALL_DATABASES, ROOT, manage

NO_ISSUES = "System check identified no issues (0 silenced)."


def production(**extra):
    """The environment of a production server: a real secret key, no debug."""
    return {
        "MULTIDS_PRODUCTION": "1",
        "MULTIDS_DEBUG": "",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    } | extra


def test_check_deploy_has_nothing_to_say_in_production(tmp_path):
    done = manage(
        "check", "--deploy", "--fail-level", "WARNING", data_dir=tmp_path, env=production()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == NO_ISSUES
    assert "WARNINGS" not in done.stderr


def test_check_deploy_does_warn_on_a_development_setup(tmp_path):
    """The negative control: the same check fails without the production settings."""
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        data_dir=tmp_path,
        env={"MULTIDS_PRODUCTION": "", "MULTIDS_DEBUG": "1"},
    )
    assert done.returncode != 0
    for warning in (
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
        "security.W018",
    ):
        assert warning in done.stderr


def test_a_host_others_can_reach_is_production_without_being_told(tmp_path):
    """Issue 32: a secret key and a public host, but no MULTIDS_PRODUCTION=1, gave no HSTS,
    no HTTPS redirect and insecure cookies."""
    env = production(MULTIDS_PRODUCTION="", DJANGO_ALLOWED_HOSTS="shop.example.com")
    done = manage("check", "--deploy", "--fail-level", "WARNING", data_dir=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == NO_ISSUES


def test_production_can_be_turned_off_only_by_saying_so(tmp_path):
    """MULTIDS_PRODUCTION=0 is an explicit choice (a plain-HTTP intranet); check --deploy
    then says what it costs."""
    env = production(MULTIDS_PRODUCTION="0", DJANGO_ALLOWED_HOSTS="shop.example.com")
    done = manage("check", "--deploy", "--fail-level", "WARNING", data_dir=tmp_path, env=env)
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr


def test_production_refuses_debug(tmp_path):
    done = manage("check", data_dir=tmp_path, env=production(MULTIDS_DEBUG="1"))
    assert done.returncode != 0
    assert "MULTIDS_DEBUG=1 shows tracebacks and settings to every visitor" in done.stderr


def test_production_refuses_a_missing_secret_key(tmp_path):
    done = manage("check", data_dir=tmp_path, env=production(DJANGO_SECRET_KEY=""))
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when MULTIDS_PRODUCTION=1" in done.stderr


# --- SECRET_KEY: the public development key only where nobody else can reach the site --------

DEVELOPMENT_KEY = "multids-insecure-development-key-set-DJANGO_SECRET_KEY-in-production"
SHOW_KEY = "from django.conf import settings; print(settings.SECRET_KEY == {key!r})"


def settings_load(tmp_path, **env):
    """Load the settings in a subprocess with env; return (loaded, stderr, uses dev key)."""
    env = {"MULTIDS_PRODUCTION": "", "MULTIDS_DEBUG": "", "DJANGO_SECRET_KEY": ""} | env
    done = manage("shell", "-c", SHOW_KEY.format(key=DEVELOPMENT_KEY), data_dir=tmp_path, env=env)
    return done.returncode == 0, done.stderr, done.stdout.strip().endswith("True")


@pytest.mark.parametrize(
    "hosts", ["", "localhost", "localhost,127.0.0.1", "127.0.0.1,[::1],::1", ".localhost"]
)
def test_the_development_key_serves_local_hosts(tmp_path, hosts):
    env = {"DJANGO_ALLOWED_HOSTS": hosts} if hosts else {}
    assert settings_load(tmp_path, **env)[::2] == (True, True)


def test_the_development_key_serves_any_host_with_debug_on(tmp_path):
    loaded, _stderr, dev_key = settings_load(
        tmp_path, DJANGO_ALLOWED_HOSTS="shop.example.com", MULTIDS_DEBUG="1"
    )
    assert loaded and dev_key


@pytest.mark.parametrize("hosts", ["shop.example.com", "localhost,shop.example.com", "*"])
def test_a_host_others_can_reach_needs_a_secret_key(tmp_path, hosts):
    loaded, stderr, _ = settings_load(tmp_path, DJANGO_ALLOWED_HOSTS=hosts)
    assert not loaded
    remote = ", ".join(sorted(set(hosts.split(",")) - {"localhost"}))
    assert (
        f"django.core.exceptions.ImproperlyConfigured: DJANGO_SECRET_KEY must be set: "
        f"DJANGO_ALLOWED_HOSTS names {remote}, which other machines can reach"
    ) in stderr
    assert settings_load(
        tmp_path, DJANGO_ALLOWED_HOSTS=hosts, DJANGO_SECRET_KEY=secrets.token_urlsafe(50)
    )[0]


@pytest.mark.parametrize(
    "env",
    [
        {"MULTIDS_PRODUCTION": "1"},
        {"DJANGO_ALLOWED_HOSTS": "shop.example.com"},
    ],
)
def test_the_known_development_key_is_refused_in_production(tmp_path, env):
    loaded, stderr, _ = settings_load(tmp_path, DJANGO_SECRET_KEY=DEVELOPMENT_KEY, **env)
    assert not loaded
    assert "DJANGO_SECRET_KEY is the development key published in this repository" in stderr
    done = manage(
        "check", "--deploy", data_dir=tmp_path, env=production(DJANGO_SECRET_KEY=DEVELOPMENT_KEY)
    )
    assert done.returncode != 0 and NO_ISSUES not in done.stdout


# --- A 500 leaves a traceback on stderr, in every mode -----------------------------------------

FAIL_ONE_REQUEST = """
import django
django.setup()
import crossdb.views
def overview(request):
    raise RuntimeError("the overview broke on purpose")
crossdb.views.overview = overview  # before the URLconf is imported
from django.test import Client
response = Client(raise_request_exception=False).get(
    "/overview/", HTTP_HOST="localhost", secure=True
)
print(response.status_code)
"""


@pytest.mark.parametrize("mode", ["development", "debug", "production"])
def test_a_server_error_is_logged_to_stderr_with_its_traceback(tmp_path, mode):
    env = {
        "development": {"MULTIDS_PRODUCTION": "", "MULTIDS_DEBUG": ""},
        "debug": {"MULTIDS_PRODUCTION": "", "MULTIDS_DEBUG": "1"},
        "production": production(),
    }[mode]
    done = python(FAIL_ONE_REQUEST, tmp_path, env)
    assert done.stdout.strip() == "500", done.stderr
    assert "Internal Server Error: /overview/" in done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: the overview broke on purpose" in done.stderr
    assert done.stderr.count("Internal Server Error: /overview/") == 1


def python(code, data_dir, env):
    """Run code in a fresh interpreter with the project's settings and env."""
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")} | {
        "MULTIDS_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "multids.settings",
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment | env,
        cwd=ROOT,
        timeout=120,
    )


# --- The debug page hides database URLs and passwords in URLs ----------------------------------


def test_the_debug_page_hides_database_urls_and_url_passwords(rf, settings):
    # Built at run time: the debug page shows this test's source lines around the raise.
    secret = {name: "s3cret-" + name for name in ("users", "default", "mail", "local", "cache")}
    settings.DEBUG = True
    settings.MULTIDS_CACHE_URL = f"redis://cache:{secret['cache']}@cache.internal:6379/0"
    request = rf.get(
        "/overview/",
        USERS_DATABASE_URL=f"postgres://multids:{secret['users']}@users-db.internal/users",
        DATABASE_URL=f"postgres://multids:{secret['default']}@app-db.internal/multids",
        SMTP_URL=f"smtp://mailer:{secret['mail']}@mail.internal:25",
        HARMLESS="visible-value",
    )
    html = debug_page(request, f"postgres://multids:{secret['local']}@orders-db.internal/orders")
    for value in secret.values():
        assert value not in html
    assert "USERS_DATABASE_URL" in html and "visible-value" in html
    assert "smtp://mailer:********************@mail.internal:25" in html


def debug_page(request, database_url):
    """The debug page of an error raised here, with database_url among the frame's locals."""
    try:
        raise RuntimeError(f"cannot reach the database ({len(database_url)} characters)")
    except RuntimeError:
        return ExceptionReporter(request, *sys.exc_info()).get_traceback_html()


def test_hide_url_passwords_keeps_the_rest_of_the_url():
    assert (
        hide_url_passwords("see postgres://u:p%40ss@h:5432/db?x=1 and http://h/a:b@c")
        == "see postgres://u:********************@h:5432/db?x=1 and http://h/a:b@c"
    )


# --- Content-Security-Policy -----------------------------------------------------------------


@pytest.mark.django_db(databases=ALL_DATABASES)
@pytest.mark.parametrize("url", ["/admin/login/", "/overview/", "/admin/core/user/"])
def test_every_page_sends_a_content_security_policy(client, admin_user, url):
    client.force_login(admin_user)
    response = client.get(url, follow=True)
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
