"""The databases overview: what each database is, how full it is, whether it is sound, and
the recent ``insert_data`` runs with a chart of rows per second per table.

Staff only: ``staff_member_required`` sends everyone else to the admin login. The page
reads counts and runs ``core.integrity.file_check`` (``PRAGMA integrity_check``) on every
SQLite file each time it is shown. Checking every order against its user and product
(``core.integrity.check_integrity``) streams the whole orders table, so it runs only when
someone presses its button (a POST, so CSRF-protected like every other form).
"""

from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from core import integrity, tables
from core.databases import location
from core.models import LoadRun
from core.routers import database_for

RECENT_RUNS = 10
CHART_WIDTH, CHART_HEIGHT = 640, 220
CHART_MARGIN = {"left": 64, "right": 12, "top": 12, "bottom": 36}


def models_in(alias):
    """Return the models whose rows live in alias: the domain models, or ours and auth's."""
    if alias == "default":
        return [LoadRun, get_user_model()]
    return [m for m in tables.MODELS.values() if database_for(m) == alias]


def database_status(alias):
    """Describe alias: engine, location, row count per table, file check, or why it cannot."""
    config = settings.DATABASES[alias]
    status = {
        "alias": alias,
        "engine": config["ENGINE"].rsplit(".", 1)[-1],
        "location": location(alias),
        "counts": [],
        "integrity": None,
        "error": None,
    }
    # Connecting to a missing SQLite file would create it empty; say what to run instead.
    if config["ENGINE"].endswith("sqlite3") and not Path(str(config["NAME"])).exists():
        status["error"] = "the file does not exist; run: python manage.py migrate_all"
        return status
    try:
        status["counts"] = [
            (model._meta.db_table, model.objects.using(alias).count()) for model in models_in(alias)
        ]
    except DatabaseError as exc:
        status["error"] = f"cannot read it ({exc}); run: python manage.py migrate_all"
        return status
    status["integrity"] = integrity.file_check(alias)
    return status


def run_row(run):
    """Flatten one LoadRun's summary for the runs table."""
    summary = run.summary
    totals = summary.get("totals", {})
    return {
        "run": run,
        "seconds": summary.get("seconds", 0),
        "stored": totals.get("stored", 0),
        "present": totals.get("already_present", 0),
        "rejected": totals.get("rejected", 0),
        "rows_per_second": totals.get("rows_per_second", 0),
        "error": summary.get("error"),
    }


def rows_per_second_chart(runs, width=CHART_WIDTH, height=CHART_HEIGHT):
    """Lay out a grouped bar chart of rows/s per table, oldest run on the left, as SVG shapes.

    Returns None when there is nothing to draw. The template only copies numbers into
    ``<rect>`` and ``<text>`` elements, so the chart needs no script and no CDN.
    """
    runs = list(reversed(runs))  # runs come newest first
    if not runs:
        return None
    values = [
        [
            r.summary.get("tables", {}).get(t, {}).get("rows_per_second", 0) or 0
            for t in tables.TABLES
        ]
        for r in runs
    ]
    top = max((v for row in values for v in row), default=0) or 1
    left, right = CHART_MARGIN["left"], width - CHART_MARGIN["right"]
    base, ceiling = height - CHART_MARGIN["bottom"], CHART_MARGIN["top"]
    group = (right - left) / len(runs)
    bar = min(group * 0.8 / len(tables.TABLES), 40)
    bars, labels = [], []
    for i, (run, row) in enumerate(zip(runs, values, strict=True)):
        start = left + i * group + (group - bar * len(tables.TABLES)) / 2
        for j, (table, value) in enumerate(zip(tables.TABLES, row, strict=True)):
            h = (base - ceiling) * value / top
            bars.append(
                {
                    "x": round(start + j * bar, 1),
                    "y": round(base - h, 1),
                    "width": round(bar - 1, 1),
                    "height": round(h, 1),
                    "table": table,
                    "title": f"{run}: {table} {value:,.0f} rows/s",
                }
            )
        labels.append(
            {"x": round(left + (i + 0.5) * group, 1), "text": f"{run.started_at:%m-%d %H:%M}"}
        )
    ticks = [
        {"y": round(base - (base - ceiling) * f, 1), "text": f"{top * f:,.0f}"} for f in (0, 0.5, 1)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "base": base,
        "label_y": base + 16,
        "bars": bars,
        "labels": labels,
        "ticks": ticks,
        "tables": tables.TABLES,
    }


@staff_member_required
@require_http_methods(["GET", "POST"])
def overview(request):
    """Show every database and the recent runs; on POST also check every order's parents."""
    runs = list(LoadRun.objects.using("default").order_by("-started_at")[:RECENT_RUNS])
    context = {
        **admin.site.each_context(request),
        "title": "Databases overview",
        "databases": [database_status(alias) for alias in settings.DATABASES],
        "runs": [run_row(r) for r in runs],
        "chart": rows_per_second_chart(runs),
        "check": integrity.check_integrity() if request.method == "POST" else None,
    }
    return render(request, "core/overview.html", context)
