"""The preview of an admin import: ``insert_data --from DIR --dry-run`` on the upload, in the
request, and the first rows of each verdict.

The dry run is the command's own (its parser, its checks: ``Command.prepare``; the loader's
``load(source, dry_run=True)``), so the preview's counts and reasons are the ones the run
will have if nothing changes meanwhile; it writes nothing anywhere (``crossdb.loading.dryrun``).
Running it in the request is bounded by the upload limit (``CROSSDB["IMPORT_MAX_BYTES"]``).

The loader keeps every rejected row with its reason but only counts the others, so the first
rows that would be stored or are already present are found by reading the first rows of each
file again (at most ``SCAN_ROWS``): a row the dry run did not reject is already present if
its id is stored (with other data it would have been rejected) or was given by an earlier
row of the file, and would be stored otherwise.

The result is plain JSON (``preview.json`` in the upload's directory), shown by the page.
"""

from __future__ import annotations

import io
import logging
from itertools import islice
from typing import Any

from django.core.management.base import CommandError

from crossdb import registry, sources
from crossdb.importjobs import command_and_options
from crossdb.imports import Upload
from crossdb.loading import load
from crossdb.loading.rows import Malformed
from crossdb.results import LoadResult
from crossdb.rules import printable

log = logging.getLogger(__name__)

FIRST_ROWS = 5  # rows shown of each verdict, per table
SCAN_ROWS = 1000  # rows read again per table to find those


def _shown(value: Any) -> str:
    return printable("" if value is None else str(value))[:200]


def preview(upload: Upload) -> dict[str, Any]:
    """The dry run's verdicts for the upload: {"tables": [...], "totals": {...},
    "warnings": [...]}, or {"error": one line} when the command would stop before loading."""
    said = io.StringIO()  # the command's warnings: files that look meant for a table
    command, options = command_and_options(upload, dry_run=True, stderr=said)
    try:
        source, _outputs = command.prepare(options)
        result = load.load(source, batch_size=options["batch_size"], dry_run=True)
        examples = first_rows(source, result)
    except (CommandError, load.LoadError, sources.SourceError) as exc:
        return {"error": printable(str(exc))}
    warnings = [
        line.removeprefix("warning: ") for line in said.getvalue().splitlines() if line.strip()
    ]
    tables = []
    for name, counts in result.tables.items():
        tables.append(
            {
                "table": name,
                "fields": list(registry.fields(name)),
                "read": counts.read,
                "stored": counts.stored,
                "present": counts.present,
                "rejected": counts.rejected,
                **examples[name],
            }
        )
    totals = result.totals()
    return {"tables": tables, "totals": totals, "warnings": warnings}


def first_rows(source: Any, result: LoadResult) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{table: {"store": rows, "present": rows, "rejected": rows}}, at most FIRST_ROWS each;
    a row is {"line", "values": [text per field], "reason"}."""
    by_table: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table in result.tables:
        rejected = [r for r in result.sorted_rejections() if r.table == table]
        by_table[table] = {
            "rejected_rows": [
                {
                    "line": _shown(r.line),
                    "values": [_shown(r.values.get(f)) for f in registry.fields(table)]
                    if r.values
                    else [_shown(r.raw)],
                    "reason": _shown(r.reason),
                }
                for r in rejected[:FIRST_ROWS]
            ],
            **_accepted_rows(source, table, {int(r.line) for r in rejected if r.line is not None}),
        }
    return by_table


def _accepted_rows(
    source: Any, table: str, rejected_lines: set[int]
) -> dict[str, list[dict[str, Any]]]:
    """The first rows of table the dry run did not reject, as would store or already present."""
    spec = registry.spec(table)
    key = spec.position(spec.pk)
    candidates = []
    for line, values in islice(source.rows(table), SCAN_ROWS):
        if isinstance(values, Malformed) or (line is not None and int(line) in rejected_lines):
            continue
        cleaned, problems = spec.clean(values)
        if problems:  # not reached: a row with a problem is rejected
            continue
        candidates.append((line, values, cleaned[key]))
    stored = set(
        spec.model.objects.using(spec.alias)
        .filter(pk__in=[c[2] for c in candidates])
        .values_list("pk", flat=True)
    )
    seen: set[Any] = set()
    rows: dict[str, list[dict[str, Any]]] = {"store_rows": [], "present_rows": []}
    for line, values, pk in candidates:
        kind = "present_rows" if pk in stored or pk in seen else "store_rows"
        seen.add(pk)
        if len(rows[kind]) < FIRST_ROWS:
            rows[kind].append(
                {"line": _shown(line), "values": [_shown(v) for v in values], "reason": ""}
            )
    return rows
