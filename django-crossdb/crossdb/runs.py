"""The record of each ``insert_data`` run, kept in ``default`` for the overview page."""

from __future__ import annotations

from datetime import UTC, datetime

from crossdb.models import LoadRun
from crossdb.results import LoadResult


def record(result: LoadResult) -> None:
    """Keep the run's summary in the default database for the overview page."""
    LoadRun.objects.create(
        started_at=datetime.fromtimestamp(result.started, UTC),
        finished_at=datetime.fromtimestamp(result.finished, UTC),
        source=result.source[:500],
        summary=result.as_dict(),
    )
