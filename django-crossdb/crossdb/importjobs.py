"""The load of an admin import, run outside the request in a process of its own.

``start`` records the run as running (``crossdb.runs.begin``), writes ``job.json`` in the
upload's directory and starts ``python -m crossdb.importrun DIRECTORY`` detached: the
request returns at once, and the status page reads the run's record. ``run_job`` is that
process's work (``crossdb.importrun`` sets Django up for it): it reads the upload as
``insert_data --from DIR --rejects ... --report ...`` would, with the command's own parser
and checks (``Command.prepare``), runs the same loader (``crossdb.loading.load.load``) with
a progress sink writing the record (``crossdb.runs.RunProgress``), writes the rejects file
and report the command would, and closes the record.

Why a fresh interpreter and not ``multiprocessing``: the loader starts writer processes of
its own, blocks signals and freezes the garbage collector, which it may do in a process
that is its own; a web server's process is threaded (a fork copies the locks its other
threads hold and its open database connections), and ``spawn`` re-imports the server's
``__main__`` (gunicorn's, runserver's). A process started like a management command, from
the same settings module and import path, shares nothing with the server, survives the
request, and a crash in it is the run's failure, not a worker's. Why not plain
``django-admin insert_data``: the run's record must be written as it goes, which the
command's terminal progress does not do.

The process uses the databases the web process uses: their ``NAME``s go in ``job.json``
(nothing else, no password: the rest comes from the settings), so a test server's test
databases are the ones loaded.

Two imports at once are allowed: concurrent loads are what the loader is built for
(``docs/guarantees.md``: concurrent ``insert_data`` processes lose nothing and orphan
nothing); a row both load is stored by one and already present to the other.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from crossdb import runs
from crossdb.imports import Upload

log = logging.getLogger(__name__)


def command_and_options(
    upload: Upload, *, dry_run: bool, stderr: io.StringIO | None = None
) -> tuple[Any, dict[str, Any]]:
    """``insert_data`` and its options for the upload, parsed by the command's own parser:
    ``--from DIR --no-progress``, and ``--dry-run`` or the rejects file and report. What
    the command would print goes nowhere; its warnings to stderr (if given)."""
    from crossdb.management.commands import insert_data

    command = insert_data.Command(stdout=io.StringIO(), stderr=stderr or io.StringIO())
    args = ["--from", str(upload.data_dir), "--no-progress"]
    if dry_run:
        args.append("--dry-run")
    else:
        args += ["--rejects", str(upload.rejects_path), "--report", str(upload.report_path)]
    parser = command.create_parser("django-admin", "insert_data")
    return command, vars(parser.parse_args(args))


def _import_path() -> str:
    """The server's import path for the process, so its settings module imports there
    whatever the working directory."""
    entries = [p for p in sys.path if p and os.path.isdir(p)]
    return os.pathsep.join(dict.fromkeys(entries))


def settings_module() -> str:
    """The settings module the process imports: the server's (``settings.SETTINGS_MODULE``
    is None under ``override_settings``, so the environment's first)."""
    module = os.environ.get("DJANGO_SETTINGS_MODULE") or settings.SETTINGS_MODULE
    if not module:  # settings.configure(): nothing a new process could import
        raise ImproperlyConfigured(
            "loading from the admin needs a settings module (DJANGO_SETTINGS_MODULE): the "
            "load runs in a process of its own, which imports it"
        )
    return str(module)


def start(upload: Upload, source: str) -> int:
    """Record the run, start its process detached, and return the run's id."""
    run = runs.begin(source)
    job = {
        "run": run.pk,
        "databases": {alias: connections[alias].settings_dict["NAME"] for alias in connections},
    }
    job_path = upload.directory / "job.json"
    job_path.write_text(json.dumps(job, default=str), encoding="utf-8")
    upload.meta["run"] = run.pk
    upload.save()
    environment = os.environ | {
        "DJANGO_SETTINGS_MODULE": settings_module(),
        "PYTHONPATH": _import_path(),
    }
    with open(upload.log_path, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "crossdb.importrun", str(upload.directory)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # a Ctrl-C to the server does not stop the load
            close_fds=True,
        )
    # Reap it when it ends: an exited child nobody waits for stays a zombie in the table.
    threading.Thread(target=process.wait, name=f"import-run-{run.pk}", daemon=True).start()
    upload.meta["pid"] = process.pid
    upload.meta["host"] = socket.gethostname()  # the pid means something on this machine only
    upload.save()
    log.info("import %s: run %s started in process %s", upload.token, run.pk, process.pid)
    return int(run.pk)


def run_job(directory: Path) -> int:
    """The process's work, once Django is set up: load, save the outputs, close the record.
    Returns the exit status (0: the run completed, whatever was rejected)."""
    from django.core.management.base import CommandError

    from crossdb import sources
    from crossdb.imports import at
    from crossdb.loading import load
    from crossdb.rules import printable

    upload = at(directory)
    job = json.loads((directory / "job.json").read_text(encoding="utf-8"))
    run_id = int(job["run"])
    if upload is None:
        runs.fail(run_id, "the upload is gone from the import directory")
        return 1
    progress = runs.RunProgress(run_id)
    try:
        command, options = command_and_options(upload, dry_run=False)
        source, outputs = command.prepare(options)
        result = load.load(source, batch_size=options["batch_size"], progress=progress)
        command.save(result, outputs)
        getattr(source, "check_unchanged", lambda: None)()
    except CommandError as exc:
        runs.fail(run_id, printable(str(exc)))
        return 1
    except (load.LoadError, sources.SourceError) as exc:
        runs.fail(
            run_id,
            f"{printable(str(exc))}. Batches committed before the failure are kept; "
            "import the same file again to finish.",
        )
        return 1
    progress.flush()
    runs.finish(run_id, result)
    log.info("run %s: %s", run_id, result.totals())
    return 0
