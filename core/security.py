"""What the web side adds to Django's own protections, each one small and named here.

* ``ContentSecurityPolicyMiddleware``: every page says which sources the browser may load
  scripts, styles and images from (only this site), so an injected ``<script>`` or
  ``onload=`` does not run even if something were ever left unescaped. Django 5.2 has no
  built-in CSP (6.0 does); the admin and our templates use no inline script or style, so
  the policy needs no nonce.
* ``DatabaseUrlHidingFilter``: Django's debug page lists the settings and the request's
  environment; under ``runserver`` that environment holds ``*_DATABASE_URL`` with their
  passwords. The filter hides those variables and any URL that carries a password.
* ``Throttle``: lets an expensive action (the overview's full integrity check) start at
  most once per interval for the whole site, and remembers when it last ran and what it
  found, in one small JSON file beside the SQLite files.
"""

import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.views.debug import SafeExceptionReporterFilter

logger = logging.getLogger(__name__)

# Only this site; nothing inline except style attributes, which the admin's widgets set from
# JavaScript (CSSOM changes are not blocked by style-src, attributes in HTML would be).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


class ContentSecurityPolicyMiddleware:
    """Add ``Content-Security-Policy`` to every response that does not set its own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # Django's technical 404 and 500 pages (DEBUG only) are built from inline styles
        # and scripts; a policy would leave a developer with an unreadable error page.
        if settings.DEBUG and response.status_code >= 400:
            return response
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


# scheme://user:password@host: the password is whatever follows the first ":" of the
# credentials, up to the "@".
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]*@", re.I)


def hide_url_passwords(text):
    """Replace the password of every URL in text with the filter's mask."""
    return URL_PASSWORD.sub(
        lambda m: f"{m['head']}{SafeExceptionReporterFilter.cleansed_substitute}@", text
    )


class DatabaseUrlHidingFilter(SafeExceptionReporterFilter):
    """Hide database URLs and passwords in URLs from the debug page and error reports.

    Django hides names matching API, KEY, PASS, SECRET, TOKEN...; ``USERS_DATABASE_URL``
    matches none, and neither does a Redis or SMTP URL with its password inside.
    """

    hidden_settings = re.compile(
        r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|DATABASE_URL", flags=re.I
    )

    def cleanse_setting(self, key, value):
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return hide_url_passwords(cleansed)
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame):
        return [
            (name, hide_url_passwords(value) if isinstance(value, str) else value)
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]


class Throttle:
    """Allow an action at most once per ``interval`` seconds across every process of the site.

    The state is one JSON file: ``{"started": epoch, "finished": epoch, "result": {...}}``.
    ``begin()`` takes an exclusive ``flock`` on it, so two requests at the same moment
    cannot both start; the start time is written before the work, so the limit also holds
    while the first one is still running.
    """

    def __init__(self, name, interval):
        self.name, self.interval = name, interval

    @property
    def path(self):
        return Path(settings.DATA_DIR) / f".{self.name}.json"

    def last(self):
        """Return the saved state, or {} when the action never ran (or the file is unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: cannot read %s (%s); treating it as never run", self.name, self.path, exc
            )
            return {}

    def wait_seconds(self, now=None):
        """Seconds until the action may start again (0 when it may start now)."""
        started = self.last().get("started")
        if started is None:
            return 0
        now = time.time() if now is None else now
        return max(0, int(started + self.interval - now + 0.999))

    def run(self, action):
        """Run action() if allowed; return (ran, state). state["result"] is action's return."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, self.last()  # another request is running it right now
            if self.wait_seconds():
                return False, self.last()
            state = {"started": time.time(), "finished": None, "result": None}
            self._save(state)
            try:
                state["result"] = action()
            finally:  # a failed run still counts, and must not look like one still running
                state["finished"] = time.time()
                self._save(state)
            return True, state
        finally:
            os.close(fd)  # releases the flock

    def _save(self, state):
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state), encoding="utf-8")
        temporary.replace(self.path)
