"""Time one whole process and sample the peak memory of its process tree."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.memory import PeakMemory

ROOT = Path(__file__).resolve().parent.parent


class BenchFailed(Exception):
    """A measured process failed; the message is its last error line."""


class Measured(NamedTuple):
    seconds: float
    peak_pss: int  # bytes, summed over the process tree
    peak_single: int  # bytes, the largest single RSS
    stdout: str


def clean_environment(extra=None):
    """This environment without any *_DATABASE_URL (each measurement names its own)."""
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment["DJANGO_SETTINGS_MODULE"] = "multids.settings"
    return environment | (extra or {})


def run(args, env=None, label="a measured process"):
    """Run python with args as one process (start-up included); return Measured."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *args],
        env=clean_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    with PeakMemory(process.pid) as memory:
        out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        last = (err.strip().splitlines() or [f"exit {process.returncode}"])[-1]
        raise BenchFailed(f"{label} failed: {last}")
    return Measured(seconds, memory.peak_total, memory.peak_single, out)


def manage(*args, env=None, label=None):
    """Run manage.py args as one measured process."""
    return run([str(ROOT / "manage.py"), *args], env=env, label=label or f"manage.py {args[0]}")
