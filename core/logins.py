"""Failed logins: each one is logged with its account and address, and an account or an
address with too many recent failures is refused for a while, before its password is even
checked.

* Django sends ``user_login_failed`` for every failed ``authenticate()``, whatever asked
  (the admin's login form, a test client, a future view); ``failed`` logs it on the
  ``core.logins`` logger (WARNING, so the server log always has it) and counts it.
* ``ThrottledModelBackend`` (``AUTHENTICATION_BACKENDS``) refuses an account that failed
  ``MAX_FAILURES_PER_ACCOUNT`` times in the last ``WINDOW_SECONDS``, or an address that
  failed ``MAX_FAILURES_PER_ADDRESS`` times, without checking the password; refused
  attempts are logged but not counted, so the lock ends ``WINDOW_SECONDS`` after the
  failures that caused it. ``ThrottledLoginForm`` (the admin's login form) says why.
* A successful login clears its account's failures (not its address's).

Where the counts live: a small SQLite file, ``.login-failures.db`` in ``MULTIDS_DATA_DIR``,
written in short ``BEGIN IMMEDIATE`` transactions. Django's local-memory cache is per
process, so N server workers would allow N times the attempts and a restart would forget
them; a file that every process of the server shares does neither, needs no migration in a
project database, and stays small (only the last window's failures are kept). Two servers
with separate data directories each count their own.

The address is ``REMOTE_ADDR``; behind the proxy of ``MULTIDS_HTTPS_PROXY=1`` it is the last
``X-Forwarded-For`` entry, the one that proxy added (the earlier ones are the client's word).
"""

import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model, user_logged_in, user_login_failed
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver

logger = logging.getLogger(__name__)

MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20  # several people may share one address (an office, a proxy)
WINDOW_SECONDS = 15 * 60
MAX_KEY_LENGTH = 200  # what is stored of an account name; usernames have at most 150
FILE_NAME = ".login-failures.db"
clock = time.time  # tests move it instead of waiting

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (kind TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_by_key ON failures (kind, key, at);
"""


def address(request):
    """The client's address: REMOTE_ADDR, or the entry our HTTPS proxy added."""
    if request is None:
        return None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if getattr(settings, "BEHIND_HTTPS_PROXY", False) and forwarded.strip():
        return forwarded.split(",")[-1].strip()[:MAX_KEY_LENGTH]
    return request.META.get("REMOTE_ADDR") or None


def _keys(account, client):
    """(kind, key, limit) for each thing a failure counts against."""
    keys = []
    if account:
        keys.append(("account", str(account)[:MAX_KEY_LENGTH], MAX_FAILURES_PER_ACCOUNT))
    if client:
        keys.append(("address", client, MAX_FAILURES_PER_ADDRESS))
    return keys


def _connect():
    path = Path(settings.DATA_DIR) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(SCHEMA)
    return connection


def wait_seconds(account, client):
    """Seconds until account and client may try again (0: now)."""
    now = clock()
    wait = 0.0
    with closing(_connect()) as db:
        for kind, key, limit in _keys(account, client):
            row = db.execute(
                "SELECT at FROM failures WHERE kind = ? AND key = ? AND at > ? "
                "ORDER BY at DESC LIMIT 1 OFFSET ?",
                (kind, key, now - WINDOW_SECONDS, limit - 1),
            ).fetchone()
            if row:  # the limit-th most recent failure is in the window
                wait = max(wait, row[0] + WINDOW_SECONDS - now)
    return int(wait + 0.999)


def count_failure(account, client):
    """Count one failure against account and client; forget the ones past the window."""
    now = clock()
    with closing(_connect()) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM failures WHERE at <= ?", (now - WINDOW_SECONDS,))
        db.executemany(
            "INSERT INTO failures (kind, key, at) VALUES (?, ?, ?)",
            [(kind, key, now) for kind, key, _limit in _keys(account, client)],
        )
        db.execute("COMMIT")


def forget_account(account):
    """Clear an account's failures (it has just logged in)."""
    with closing(_connect()) as db:
        db.execute(
            "DELETE FROM failures WHERE kind = 'account' AND key = ?",
            (str(account)[:MAX_KEY_LENGTH],),
        )


def in_words(seconds):
    """ "1 minute", "15 minutes": a wait rounded up to whole minutes."""
    minutes = max(1, -(-seconds // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend, refusing a throttled account or address unchecked."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        wait = wait_seconds(username, address(request))
        if wait:
            if request is not None:
                request.multids_login_throttled = wait  # for the form and the log
            # authenticate() stops at PermissionDenied and sends user_login_failed.
            raise PermissionDenied(f"too many failed logins; try again in {in_words(wait)}")
        return super().authenticate(request, username, password, **kwargs)


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin's login form, saying when an attempt was refused unchecked."""

    def clean(self):
        try:
            return super().clean()
        except ValidationError:
            wait = getattr(self.request, "multids_login_throttled", None)
            if wait:
                raise ValidationError(
                    "Too many failed logins for this account or from this address. "
                    f"Try again in {in_words(wait)}.",
                    code="throttled",
                ) from None
            raise


@receiver(user_login_failed, dispatch_uid="core.logins.failed")
def failed(sender, credentials, request=None, **kwargs):
    """Log every failed login with its account and address; count those that were checked."""
    account = credentials.get("username", credentials.get(get_user_model().USERNAME_FIELD))
    client = address(request)
    if getattr(request, "multids_login_throttled", None):
        logger.warning("login refused (too many failures): account %r from %s", account, client)
        return
    logger.warning("login failed: account %r from %s", account, client)
    count_failure(account, client)


@receiver(user_logged_in, dispatch_uid="core.logins.succeeded")
def succeeded(sender, request, user, **kwargs):
    forget_account(user.get_username())
