"""Read-your-writes across requests: each request is a reader of its own
(``crossdb.causal.reading``) starting from the positions its browser session wrote.

After a request that wrote to a database with replicas, the primary's position of that
write goes back in a signed cookie (``crossdb_positions``: ``{alias: position}``, signed
with the project's key, so a client cannot pin itself or anyone to a forged position); the
next requests read that database from a replica only once it has replayed the position,
else from the primary. The cookie keeps a position only until every replica of its
database has replayed it, then it is deleted: sessions go back to the replicas.

Why a cookie and not the session: it needs no session (an anonymous reader has writes
too), no store and no write per request, and it works the same for sync and async views.

Wire it after ``SessionMiddleware``::

    MIDDLEWARE = [..., "crossdb.middleware.CausalReadsMiddleware", ...]
"""

from __future__ import annotations

import json
import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signing
from django.db import DatabaseError

from crossdb import causal, replicas

log = logging.getLogger(__name__)

COOKIE = "crossdb_positions"
SALT = "crossdb.causal.positions"
MAX_AGE = 24 * 3600  # a position older than this has been replayed by any usable replica


def positions_from(request) -> dict[str, int]:
    """The positions the request's cookie carries ({} when none, stale or forged)."""
    raw = request.COOKIES.get(COOKIE)
    if not raw:
        return {}
    try:
        value = json.loads(signing.get_cookie_signer(salt=SALT).unsign(raw, max_age=MAX_AGE))
    except (signing.BadSignature, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    known = replicas.configured()
    return {
        alias: position
        for alias, position in value.items()
        if alias in known and isinstance(position, int) and position >= 0
    }


def _finish(request, response, reader: causal.ReaderState) -> None:
    """Take the positions of the request's committed writes; keep in the cookie those some
    replica has not replayed yet, delete it when none is left."""
    try:
        causal.take_positions(reader)
    except DatabaseError as exc:  # the primary went away after the write: its reads fail too
        log.warning("cannot read the position of this request's writes: %s", exc)
    keep = causal.settled(reader)
    if keep:
        signed = signing.get_cookie_signer(salt=SALT).sign(
            json.dumps(keep, sort_keys=True, separators=(",", ":"))
        )
        response.set_cookie(
            COOKIE,
            signed,
            max_age=MAX_AGE,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Lax",
        )
    elif COOKIE in request.COOKIES:
        response.delete_cookie(COOKIE, samesite="Lax")


class CausalReadsMiddleware:
    """Make each request a reader that sees its session's writes (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if not replicas.configured():
            return self.get_response(request)
        with causal.reading(positions_from(request)) as reader:
            response = self.get_response(request)
            _finish(request, response, reader)
        return response

    async def __acall__(self, request):
        if not replicas.configured():
            return await self.get_response(request)
        with causal.reading(positions_from(request)) as reader:
            response = await self.get_response(request)
            await sync_to_async(_finish)(request, response, reader)
        return response
