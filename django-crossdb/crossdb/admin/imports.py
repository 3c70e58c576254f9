"""Loading from the admin: upload, preview, confirm, watch.

* ``table_import`` (``/admin/APP/MODEL/import/``, the *Import* button of every registered
  table's list, wired by ``TableAdmin.get_urls``) takes one file for that table;
  ``zip_import`` (``/imports/new/``, linked from the overview and the table pages) takes a
  whole directory as a zip (``crossdb.imports``: what is refused, where it is kept).
* The upload is previewed at once: ``insert_data --dry-run`` on it (``crossdb.importpreview``)
  gives each table's counts and first rows of each verdict with their reasons; nothing is
  written. ``preview`` shows them with a *Confirm* button.
* Confirming starts the real load in a process of its own (``crossdb.importjobs``) and goes
  to ``status``, which shows its progress from the run's record and reloads itself each
  second (a ``<meta>`` refresh: the site's Content-Security-Policy allows no script) until
  the summary is there, with a link to the rejects file (``rejects``).

Who may: staff with the add permission of every table of the upload (for the zip page, of
at least one table to open it). An upload is its uploader's: anyone else gets 404 for its
pages, as for an upload that does not exist. Every POST is CSRF-protected; the size limit
(``CROSSDB["IMPORT_MAX_BYTES"]``) is checked on the request's Content-Length before the body
is read (the CSRF check reads the form, files and all, so the views check it first and
apply ``csrf_protect`` after), and on the file itself. Django's own upload settings still
apply underneath: ``FILE_UPLOAD_MAX_MEMORY_SIZE`` decides whether the file is held in memory
or in a temporary file (``FILE_UPLOAD_TEMP_DIR``, deleted after the request) before it is
copied to the import directory; ``DATA_UPLOAD_MAX_MEMORY_SIZE`` counts the form's other
fields only (the CSRF token), never the file, so it needs no change. Every refusal is a page
with one line, never a 500; everything shown from an upload is escaped by the templates.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from crossdb import conf, importjobs, importpreview, imports, registry, runs
from crossdb.models import LoadRun
from crossdb.rules import printable

log = logging.getLogger(__name__)

UPLOAD_TEMPLATE = "admin/crossdb/import_upload.html"
PREVIEW_TEMPLATE = "admin/crossdb/import_preview.html"
STATUS_TEMPLATE = "admin/crossdb/import_status.html"
# What a multipart form adds around the file (boundaries, headers, the CSRF token).
FORM_ALLOWANCE = 64 * 1024

View = Callable[..., HttpResponse]


def may_add(user: Any, table: str) -> bool:
    opts = registry.spec(table).model._meta
    return bool(user.has_perm(f"{opts.app_label}.{get_permission_codename('add', opts)}"))


def importable(user: Any) -> list[str]:
    """The tables user may import into (add permission), in commit order."""
    return [t for t in registry.tables() if may_add(user, t)]


def limit() -> int:
    return int(conf.get("IMPORT_MAX_BYTES"))


def too_large_words() -> str:
    return (
        f"The upload is larger than {imports.size_words(limit())}, the most this site "
        "accepts (CROSSDB['IMPORT_MAX_BYTES']); nothing was imported."
    )


def content_length(request: HttpRequest) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0


def size_limited(view: View) -> View:
    """Refuse (413) a POST whose body is over the limit before anything reads it, then
    check CSRF (which reads the body) and run view."""
    protected = csrf_protect(view)

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST" and content_length(request) > limit() + FORM_ALLOWANCE:
            return upload_page(request, kwargs.get("table"), too_large_words(), status=413)
        return protected(request, *args, **kwargs)

    return csrf_exempt(checked)


def upload_page(
    request: HttpRequest, table: str | None, error: str | None = None, status: int = 200
) -> HttpResponse:
    """The upload form of one table (or of a zip when table is None), with error if any."""
    spec = registry.spec(table) if table else None
    context = {
        **admin.site.each_context(request),
        "title": f"Import {spec.plural}" if spec else "Import a directory as a zip",
        "opts": spec.model._meta if spec else None,
        "table": table,
        "error": error,
        "formats": imports.formats_words(),
        "max_size": imports.size_words(limit()),
        "fields": registry.fields(table) if table else None,
        "tables": [
            {"name": t, "fields": ", ".join(registry.fields(t))} for t in importable(request.user)
        ],
        "accept": ",".join(imports.SUFFIXES) if table else ".zip",
    }
    return TemplateResponse(request, UPLOAD_TEMPLATE, context, status=status)


def _received(request: HttpRequest, table: str | None) -> HttpResponse:
    """Store the POSTed file, preview it, and go to the preview (or say what is wrong)."""
    file = request.FILES.get("file")
    if file is None:
        return upload_page(request, table, "Choose a file to upload.", status=400)
    if file.size is not None and file.size > limit():
        return upload_page(request, table, too_large_words(), status=413)
    name = file.name or ""
    upload = imports.create(str(request.user.pk), name, "table" if table else "zip")
    try:
        if table:
            imports.store_table_file(upload, table, name, file.chunks())
        else:
            imports.unpack_zip(upload, file)
            refused = [t for t in upload.tables if not may_add(request.user, t)]
            if refused:
                raise PermissionDenied(
                    "you may not add "
                    + ", ".join(registry.spec(t).plural for t in refused)
                    + f", which the zip holds ({', '.join(refused)})"
                )
    except imports.Refused as exc:
        upload.discard()
        return upload_page(request, table, str(exc), status=exc.status)
    except PermissionDenied:
        upload.discard()
        raise
    result = importpreview.preview(upload)
    upload.preview_path.write_text(json.dumps(result), encoding="utf-8")
    log.info("import %s by user %s: %s", upload.token, request.user.pk, upload.tables)
    return HttpResponseRedirect(reverse("crossdb:import-preview", args=[upload.token]))


@never_cache
@require_http_methods(["GET", "POST"])
def _table_import(request: HttpRequest, table: str) -> HttpResponse:
    """One table's import page (wired, with the admin's login, by ``TableAdmin.get_urls``)."""
    if not may_add(request.user, table):
        raise PermissionDenied(f"importing {table} needs the add permission on it")
    if request.method == "POST":
        return _received(request, table)
    return upload_page(request, table)


# csrf_exempt outside, csrf_protect inside (size_limited): the admin's ``admin_view`` adds
# the login check and leaves CSRF to the view.
table_import = size_limited(_table_import)


@never_cache
@require_http_methods(["GET", "POST"])
def _zip_import(request: HttpRequest) -> HttpResponse:
    if not importable(request.user):
        raise PermissionDenied("importing needs the add permission on a table")
    if request.method == "POST":
        return _received(request, None)
    return upload_page(request, None)


zip_import = staff_member_required(size_limited(_zip_import))


def owned(request: HttpRequest, token: str) -> imports.Upload:
    """The upload named by token if it is the requester's (else 404), after checking they
    may still add to every table in it (else 403)."""
    upload = imports.find(token)
    if upload is None or upload.meta.get("owner") != str(request.user.pk):
        raise Http404("no such import")
    refused = [t for t in upload.tables if not may_add(request.user, t)]
    if refused:
        raise PermissionDenied(f"importing {', '.join(refused)} needs the add permission")
    return upload


def _page(
    request: HttpRequest,
    template: str,
    upload: imports.Upload,
    status: int = 200,
    **context: Any,
) -> HttpResponse:
    spec = registry.spec(upload.tables[0]) if len(upload.tables) == 1 else None
    return TemplateResponse(
        request,
        template,
        {
            **admin.site.each_context(request),
            "opts": spec.model._meta if spec else None,
            "upload": upload,
            "label": upload.meta.get("label", ""),
            "ignored": upload.meta.get("ignored", []),
            **context,
        },
        status=status,
    )


@staff_member_required
@never_cache
@require_http_methods(["GET", "POST"])
def preview(request: HttpRequest, token: str) -> HttpResponse:
    """The dry run's verdicts and the Confirm button; POST (Confirm) starts the load."""
    upload = owned(request, token)
    status_url = reverse("crossdb:import-status", args=[upload.token])
    if upload.run_id is not None:
        return HttpResponseRedirect(status_url)
    try:
        result = json.loads(upload.preview_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise Http404("this import has no preview") from None
    if request.method == "POST" and not result.get("error"):
        if upload.claim_start():
            label = upload.meta.get("label") or ", ".join(upload.tables)
            importjobs.start(upload, f"admin import of {label} by {request.user.get_username()}")
        return HttpResponseRedirect(status_url)
    return _page(
        request,
        PREVIEW_TEMPLATE,
        upload,
        title=f"Import {upload.meta.get('label', '')}: preview",
        preview=result,
        status=400 if result.get("error") else 200,
    )


def _process_gone(upload: imports.Upload) -> bool:
    """Whether the run's process (on this machine) is no longer there."""
    pid, here = upload.meta.get("pid"), socket.gethostname()
    if not isinstance(pid, int) or upload.meta.get("host", here) != here:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@staff_member_required
@never_cache
@require_http_methods(["GET"])
def status(request: HttpRequest, token: str) -> HttpResponse:
    """How the load goes (reloaded each second while it runs), then its summary."""
    upload = owned(request, token)
    if upload.run_id is None:
        return HttpResponseRedirect(reverse("crossdb:import-preview", args=[upload.token]))
    run = LoadRun.objects.using("default").filter(pk=upload.run_id).first()
    if run is None:
        raise Http404("the run's record is gone")
    if run.status == LoadRun.RUNNING and _process_gone(upload):
        runs.fail(
            run.pk,
            "the load's process ended without finishing (see run.log in the import "
            "directory); batches committed before are kept: import the same file again",
        )
        run.refresh_from_db()
    summary = run.summary or {}
    tables = [
        {"table": t, **summary.get("tables", {}).get(t, {}), **run.progress.get(t, {})}
        for t in upload.tables
    ]
    for row in tables:
        fraction = row.get("fraction")
        row["percent"] = None if fraction is None else round(fraction * 100)
    rejected = summary.get("totals", {}).get("rejected", 0)
    return _page(
        request,
        STATUS_TEMPLATE,
        upload,
        title=f"Import {upload.meta.get('label', '')}: {run.get_status_display()}",
        run=run,
        running=run.status == LoadRun.RUNNING,
        tables=tables,
        totals=summary.get("totals"),
        error=summary.get("error"),
        rejects_url=reverse("crossdb:import-rejects", args=[upload.token])
        if rejected and upload.rejects_path.exists()
        else None,
    )


@staff_member_required
@never_cache
@require_http_methods(["GET"])
def rejects(request: HttpRequest, token: str) -> FileResponse:
    """The run's rejects file, to its uploader only, as a download (never a static URL)."""
    upload = owned(request, token)
    try:
        handle = open(upload.rejects_path, "rb")  # noqa: SIM115  (FileResponse closes it)
    except FileNotFoundError:
        raise Http404("this import has no rejects file") from None
    name = f"rejects-{'-'.join(upload.tables)}.csv"
    return FileResponse(
        handle, as_attachment=True, filename=printable(name), content_type="text/csv"
    )
