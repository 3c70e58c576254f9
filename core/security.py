"""What the web side adds to Django's own protections, each one small and named here.

* ``ContentSecurityPolicyMiddleware``: every page says which sources the browser may load
  scripts, styles and images from (only this site), so an injected ``<script>`` or
  ``onload=`` does not run even if something were ever left unescaped. Django 5.2 has no
  built-in CSP (6.0 does); the admin and our templates use no inline script or style, so
  the policy needs no nonce.
* ``DatabaseUrlHidingFilter``: Django's debug page lists the settings and the request's
  environment; under ``runserver`` that environment holds ``*_DATABASE_URL`` with their
  passwords. The filter hides those variables and any URL that carries a password.
"""

import logging
import re

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
