"""The databases overview: what each database is, how full it is, whether it is sound, and
the recent ``insert_data`` runs with a chart of rows per second per table.

Who may see it: staff with view permission on every registered table (the page shows
their counts and file paths, and can scan every order); anyone else logged in as staff gets
403, everyone else the admin login. Responses are ``never_cache``: they hold live counts.

Showing the page costs a row count per table and nothing that grows with the files (a few
milliseconds at a million orders). The expensive parts run only in the full check
(``crossdb.integrity.check_integrity``): ``PRAGMA integrity_check`` reads every page of every
SQLite file (6.8-7.9 s per render at a million orders when the page ran it itself, issue
32), and the reference check streams every child table. It runs only on a POST
(CSRF-protected like every form), at most once per ``FULL_CHECK_INTERVAL`` seconds for the
whole site (``crossdb.throttle.Throttle``), and its result is kept with the throttle's state:
the page shows each file's last check, when it ran, how long it took and what it found. A
POST the interval refuses costs no more than a GET.
"""

import math
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from crossdb import integrity, registry, replicas
from crossdb.databases import location
from crossdb.models import LoadRun
from crossdb.routers import database_for
from crossdb.throttle import Throttle

RECENT_RUNS = 10
CHART_WIDTH, CHART_HEIGHT = 640, 220
CHART_MARGIN = {"left": 64, "right": 12, "top": 12, "bottom": 40}
SERIES = 6  # colours in overview.css, taken in turn by the tables
MAX_TICKS = 5  # at most this many steps between 0 and the top of the y-axis
FULL_CHECK_INTERVAL = 30  # seconds between two full checks, for the whole site
full_check_throttle = Throttle("overview-full-check", FULL_CHECK_INTERVAL)


def overview_permissions():
    """The permissions the overview needs: view on every loadable table."""
    return [
        f"{m._meta.app_label}.{get_permission_codename('view', m._meta)}"
        for m in registry.models().values()
    ]


def overview_permission_required(view):
    """Send strangers to the login page; refuse (403) staff without view permission."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not request.user.has_perms(overview_permissions()):
            raise PermissionDenied(
                "the overview needs view permission on "
                + listed(m._meta.verbose_name_plural for m in registry.models().values())
            )
        return view(request, *args, **kwargs)

    return staff_member_required(checked)


def models_in(alias):
    """Return the models whose rows live in alias: the domain models, or ours and auth's."""
    if alias == "default":
        return [LoadRun, get_user_model()]
    return [m for m in registry.models().values() if database_for(m) == alias]


def database_status(alias, files=None):
    """Describe alias: engine, location, row count per table, or why it cannot be read.

    ``files`` is {alias: file check} from the last full check; the check is not run here.
    """
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
    status["integrity"] = (files or {}).get(alias)
    return status


def replica_rows():
    """Each replica as the page shows it: its lag in bytes and seconds, whether reads use
    it, and why not (checked now: a few milliseconds per replica)."""
    return [
        status.as_dict() | {"location": location(status.alias)} for status in replicas.statuses()
    ]


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


def nice_step(top, max_ticks=MAX_TICKS):
    """Return the smallest step of 1, 2 or 5 x 10^n (at least 1) that covers top in max_ticks."""
    if top <= max_ticks:
        return 1
    magnitude = 10 ** math.floor(math.log10(top / max_ticks))
    for factor in (1, 2, 5, 10):
        if factor * magnitude * max_ticks >= top:
            return factor * magnitude
    return 10 * magnitude  # not reached: 10 x magnitude always covers top


def run_labels(runs):
    """Return one x-axis label per run, (time, date), each different from the others.

    Minutes are enough to tell most runs apart; two runs in one minute show seconds, and
    two in one second get their place in the list.
    """
    for time_format in ("%H:%M", "%H:%M:%S"):
        labels = [(f"{r.started_at:{time_format}}", f"{r.started_at:%m-%d}") for r in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [(f"{time} #{i + 1}", date) for i, (time, date) in enumerate(labels)]


def rows_per_second_chart(runs, width=CHART_WIDTH, height=CHART_HEIGHT):
    """Lay out a grouped bar chart of rows/s per table, oldest run on the left, as SVG shapes.

    Returns None when there is nothing to draw. The y-axis goes from 0 to a round value
    (steps of 1, 2 or 5 x 10^n). The template only copies numbers into ``<rect>`` and
    ``<text>`` elements, so the chart needs no script and no CDN.
    """
    runs = list(reversed(runs))  # runs come newest first
    if not runs:
        return None
    values = [
        [
            r.summary.get("tables", {}).get(t, {}).get("rows_per_second", 0) or 0
            for t in registry.tables()
        ]
        for r in runs
    ]
    highest = max((v for row in values for v in row), default=0)
    step = nice_step(highest)
    top = max(math.ceil(highest / step), 1) * step
    left, right = CHART_MARGIN["left"], width - CHART_MARGIN["right"]
    base, ceiling = height - CHART_MARGIN["bottom"], CHART_MARGIN["top"]
    group = (right - left) / len(runs)
    bar = min(group * 0.8 / len(registry.tables()), 40)
    bars, labels = [], []
    for i, (run, row, (time, date)) in enumerate(zip(runs, values, run_labels(runs), strict=True)):
        start = left + i * group + (group - bar * len(registry.tables())) / 2
        for j, (table, value) in enumerate(zip(registry.tables(), row, strict=True)):
            h = (base - ceiling) * value / top
            bars.append(
                {
                    "x": round(start + j * bar, 1),
                    "y": round(base - h, 1),
                    "width": round(bar - 1, 1),
                    "height": round(h, 1),
                    "table": table,
                    "series": f"series-{j % SERIES}",
                    "title": f"{run}: {table} {value:,.0f} rows/s",
                }
            )
        labels.append({"x": round(left + (i + 0.5) * group, 1), "time": time, "date": date})
    ticks = [
        {"y": round(base - (base - ceiling) * n * step / top, 1), "text": f"{n * step:,}"}
        for n in range(round(top / step) + 1)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "base": base,
        "label_y": base + 16,
        "date_y": base + 30,
        "bars": bars,
        "labels": labels,
        "ticks": ticks,
        "tables": [
            {"name": t, "series": f"series-{j % SERIES}"} for j, t in enumerate(registry.tables())
        ],
    }


def listed(words):
    """ "a", "a and b", "a, b and c"."""
    words = [str(w) for w in words]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def reference_words():
    """What the full check covers, from the registry: the tables holding references (by
    their plural) and the tables they reference (by their noun)."""
    children = [s for s in registry.specs().values() if s.references]
    parents = dict.fromkeys(r.noun for s in children for r in s.references)
    parent_tables = dict.fromkeys(r.parent for s in children for r in s.references)
    return {
        "children": listed(s.name for s in children),
        "parent_tables": listed(parent_tables),
        "parents": listed(parents),
        "parents_or": " or ".join(parents),
    }


def full_check():
    """Check every reference of every table; return what the page shows, as JSON data.
    With replicas, the children and their parents are read from them where that is causal
    (``crossdb.causal``), and a suspected orphan is confirmed on the primaries."""
    if replicas.configured():
        result = integrity.check_integrity(replica=True)
    else:
        result = integrity.check_integrity()
    checked = listed(f"{n:,} {table}" for table, n in result.rows_checked.items())
    return result.as_dict() | {
        "orphan_lines": [str(o) for o in result.orphans],
        "checked_words": checked or "nothing",
        "rows_checked_total": result.children_checked,
    }


def last_full_check():
    """The last full check for the template: when, how long, what it found (None: never)."""
    state = full_check_throttle.last()
    if not state.get("started"):
        return None
    finished = state.get("finished")
    return {
        "started_at": datetime.fromtimestamp(state["started"], UTC),
        "running": finished is None,
        "seconds": None if finished is None else round(finished - state["started"], 1),
        "result": state.get("result"),
    }


@overview_permission_required
@never_cache
@require_http_methods(["GET", "POST"])
def overview(request):
    """Show every database and the recent runs; on POST also check every reference."""
    status, refused_for = 200, 0
    if request.method == "POST":
        ran, _state = full_check_throttle.run(full_check)
        if not ran:
            status, refused_for = 429, max(full_check_throttle.wait_seconds(), 1)
    # a run still going (an import from the admin) has no summary yet: its page shows it
    finished = LoadRun.objects.using("default").exclude(status=LoadRun.RUNNING)
    runs = list(finished.order_by("-started_at")[:RECENT_RUNS])
    check = last_full_check()
    files = ((check or {}).get("result") or {}).get("databases")
    context = {
        **admin.site.each_context(request),
        "title": "Databases overview",
        "databases": [
            database_status(alias, files)
            for alias in settings.DATABASES
            if not replicas.is_replica(alias)
        ],
        "replicas": replica_rows(),
        "runs": [run_row(r) for r in runs],
        "chart": rows_per_second_chart(runs),
        "check": check,
        "check_refused_for": refused_for,
        "check_interval": FULL_CHECK_INTERVAL,
        "references": reference_words(),
        "may_import": any(
            request.user.has_perm(f"{m._meta.app_label}.{get_permission_codename('add', m._meta)}")
            for m in registry.models().values()
        ),
    }
    return render(request, "crossdb/overview.html", context, status=status)
