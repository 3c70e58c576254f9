"""Failed logins over HTTP (issue 32: 50 wrong passwords in 27 s, none throttled or logged,
then the right one accepted at once): every failure is logged with its account and address
through ``user_login_failed``, and an account or an address with too many recent failures is
refused, the right password too, until the window has passed."""

import logging

import pytest
from django.contrib.auth import authenticate
from django.test import Client, RequestFactory

from core import logins
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

LOGIN = "/admin/login/"
PASSWORD = "the-right-password-7"
THROTTLED = "Too many failed logins for this account or from this address."


@pytest.fixture(autouse=True)
def own_data_dir(settings, tmp_path):
    """A data directory of its own: the failures counted start afresh."""
    settings.DATA_DIR = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(django_user_model):
    for name in ("ann", "bob"):
        django_user_model.objects.create_user(name, password=PASSWORD, is_staff=True)


@pytest.fixture
def now(monkeypatch):
    """The throttle's clock, moved by hand: no test waits for it."""
    moment = [1_000_000.0]
    monkeypatch.setattr(logins, "clock", lambda: moment[0])
    return moment


def log_in(client, username, password, address="127.0.0.1"):
    """POST the admin's login form; return (logged in, page text)."""
    response = client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )
    text = " ".join(response.content.decode().split()) if response.status_code == 200 else ""
    return response.status_code == 302 and "_auth_user_id" in client.session, text


def login_log(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "core.logins"]


def test_fifty_wrong_passwords_are_logged_and_the_right_one_is_then_refused(staff, now, caplog):
    caplog.set_level(logging.WARNING, logger="core.logins")
    client = Client()
    for attempt in range(50):
        logged_in, text = log_in(client, "ann", f"guess-{attempt}")
        assert not logged_in
        if attempt < logins.MAX_FAILURES_PER_ACCOUNT:
            assert "Please enter the correct username and password" in text
        else:
            assert f"{THROTTLED} Try again in 15 minutes." in text
        now[0] += 0.5
    logged_in, text = log_in(client, "ann", PASSWORD)
    assert not logged_in and THROTTLED in text
    log = login_log(caplog)
    assert log[:5] == ["login failed: account 'ann' from 127.0.0.1"] * 5
    assert log[5:] == ["login refused (too many failures): account 'ann' from 127.0.0.1"] * 46
    # The lock ends a window after the failures that caused it; refusals do not extend it.
    now[0] += logins.WINDOW_SECONDS - 20
    assert log_in(client, "ann", PASSWORD) == (True, "")


def test_another_account_is_not_locked_by_an_accounts_failures(staff, now):
    for attempt in range(logins.MAX_FAILURES_PER_ACCOUNT):
        log_in(Client(), "ann", f"guess-{attempt}")
    assert not log_in(Client(), "ann", PASSWORD)[0]
    assert log_in(Client(), "bob", PASSWORD)[0]


def test_an_address_trying_many_accounts_is_refused(staff, now):
    for attempt in range(logins.MAX_FAILURES_PER_ADDRESS):
        log_in(Client(), f"nobody-{attempt}", "guess", address="127.0.0.2")
    logged_in, text = log_in(Client(), "bob", PASSWORD, address="127.0.0.2")
    assert not logged_in and THROTTLED in text
    assert log_in(Client(), "bob", PASSWORD, address="127.0.0.3")[0]  # another address


def test_a_successful_login_clears_the_accounts_failures(staff, now):
    for attempt in range(logins.MAX_FAILURES_PER_ACCOUNT - 1):
        log_in(Client(), "ann", f"guess-{attempt}")
    assert log_in(Client(), "ann", PASSWORD)[0]
    for attempt in range(logins.MAX_FAILURES_PER_ACCOUNT - 1):
        log_in(Client(), "ann", f"again-{attempt}")
    assert log_in(Client(), "ann", PASSWORD)[0]


def test_any_failed_authenticate_is_logged_through_the_signal(staff, caplog):
    """Not only the admin's form: whatever calls authenticate() is logged and counted."""
    caplog.set_level(logging.WARNING, logger="core.logins")
    request = RequestFactory().post(LOGIN, REMOTE_ADDR="::1")
    assert authenticate(request, username="bob", password="wrong") is None
    assert login_log(caplog) == ["login failed: account 'bob' from ::1"]
    assert logins.wait_seconds("bob", "::1") == 0  # one failure is no lock


def test_behind_the_https_proxy_the_address_is_the_one_it_added(settings, rf):
    request = rf.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 127.0.0.9")
    assert logins.address(request) == "127.0.0.1"
    settings.BEHIND_HTTPS_PROXY = True
    assert logins.address(request) == "127.0.0.9"
