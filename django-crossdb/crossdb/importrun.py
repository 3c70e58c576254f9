"""``python -m crossdb.importrun DIRECTORY``: the process an admin import's load runs in
(started by ``crossdb.importjobs.start``, which says why a process of its own).

A module of its own because it must point the settings at the web process's databases
(``job.json``: their ``NAME``s) and set Django up before anything imports a model, which
``crossdb.importjobs`` does at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Point the settings at the web process's databases, set Django up, run the job."""
    directory = Path(argv[1])
    job = json.loads((directory / "job.json").read_text(encoding="utf-8"))
    from django.conf import settings

    for alias, name in job["databases"].items():
        if alias in settings.DATABASES:  # before any connection is made
            settings.DATABASES[alias]["NAME"] = name
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from crossdb.importjobs import run_job

    return run_job(directory)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
