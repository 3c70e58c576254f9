"""Run a management command with crossdb's test hooks set: ``python tests/launch.py ARGS``.

crossdb reads no switch from the environment. The tests start every command whose hooks
they set through this file, which reads the test harness's variables, sets the hooks, and
runs the command as ``manage.py ARGS`` would (``insert_data``'s writer processes are
forked, so they inherit the hooks). A plain script run by path, so a test can use it from
any virtual environment that has Django and crossdb (the example project's wheel test).

==================================  ============================================
variable (the harness's own)        hook
==================================  ============================================
``MULTIDS_TEST_NO_GUARD=1``         ``crossdb.guard.ENABLED = False``: the races'
                                    negative controls
``MULTIDS_TEST_HOLD=PATH``          ``crossdb.loading.writers.HOLD``: the first writer
                                    that looks parents up creates ``PATH.held`` and
                                    waits (60 s at most) for ``PATH.go``
``MULTIDS_TEST_NO_PARENT_WATCH``    ``crossdb.loading.processes.PARENT_WATCH``:
                                    ``1`` off, ``prctl`` the kernel's part off
``MULTIDS_TEST_SEGMENT_UNPROTECTED``  ``crossdb.loading.segment.UNPROTECTED = True``
``MULTIDS_TEST_CHECKPOINT_SECONDS``   ``crossdb.resume.CHECKPOINT_SECONDS``: how often
                                    a run's record keeps its settled prefixes
==================================  ============================================
"""

import os
import sys
import time
from pathlib import Path

HOLD = "MULTIDS_TEST_HOLD"  # the variable naming the path a held writer waits at


def hold_at(path, limit=60.0):
    """The HOLD hook for path: say it holds, then wait for the go (bounded)."""

    def hold():
        Path(f"{path}.held").touch()
        deadline = time.monotonic() + limit
        while not os.path.exists(f"{path}.go") and time.monotonic() < deadline:
            time.sleep(0.01)

    return hold


def set_hooks(env=os.environ):
    """Set crossdb's test hooks from the harness's variables (Django must be set up)."""
    from crossdb import guard, resume
    from crossdb.loading import processes, writers

    guard.ENABLED = env.get("MULTIDS_TEST_NO_GUARD") != "1"
    hold = env.get(HOLD)
    writers.HOLD = hold_at(hold) if hold else None
    watch = env.get("MULTIDS_TEST_NO_PARENT_WATCH")
    processes.PARENT_WATCH = {"1": "off", "prctl": "no-prctl"}.get(watch, "on")
    if checkpoint := env.get("MULTIDS_TEST_CHECKPOINT_SECONDS"):
        resume.CHECKPOINT_SECONDS = float(checkpoint)
    if env.get("MULTIDS_TEST_SEGMENT_UNPROTECTED") == "1":
        # PostgreSQL's segment imports psycopg, which a SQLite project may not have installed
        from crossdb.loading import segment

        segment.UNPROTECTED = True


def main(argv):
    sys.path.insert(0, os.getcwd())  # the project, as manage.py run from there sees it
    import django

    django.setup()
    set_hooks()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
