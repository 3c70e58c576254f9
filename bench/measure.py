"""Time one whole process and sample the peak memory of its process tree."""

import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.memory import PeakMemory, Sampler

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-data"  # the workload and every measured database


class BenchFailed(Exception):
    """A measured process failed; the message is its last error line."""


class Measured(NamedTuple):
    seconds: float
    peak_pss: int  # bytes, summed over the process tree
    peak_single: int  # bytes, the largest single RSS
    stdout: str
    cpu: float = 0.0  # CPU seconds of the process tree (user + system)
    server_cpu: float | None = None  # CPU seconds of the PostgreSQL backends it used


def say_round(backend, round_, repeat):
    """Rounds run every approach in turn, so a machine that slows down slows them all."""
    if repeat > 1:
        print(f"{backend}: round {round_} of {repeat} ...", file=sys.stderr, flush=True)


def median(measurements):
    """One Measured for several runs of the same approach: the median time and CPU, the
    largest peak memory (the bound a user must have), the last run's output."""
    import statistics

    runs = list(measurements)
    servers = [m.server_cpu for m in runs if m.server_cpu is not None]
    return Measured(
        statistics.median(m.seconds for m in runs),
        max(m.peak_pss for m in runs),
        max(m.peak_single for m in runs),
        runs[-1].stdout,
        statistics.median(m.cpu for m in runs),
        statistics.median(servers) if servers else None,
    )


def clean_environment(extra=None):
    """This environment without any *_DATABASE_URL (each measurement names its own)."""
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment["DJANGO_SETTINGS_MODULE"] = "multids.settings"
    return environment | (extra or {})


def run(args, env=None, label="a measured process", server_tag=None):
    """Run python with args as one process (start-up included); return Measured.

    server_tag: also count the CPU of the PostgreSQL backends whose database name
    contains it (the server's share of the work, invisible in the client's tree)."""
    return run_command([sys.executable, *args], env=env, label=label, server_tag=server_tag)


def run_command(argv, env=None, label="a measured process", server_tag=None):
    """Run argv (any program: python, or a peer loader) as one measured process."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = ServerCPU(server_tag) if server_tag else contextlib.nullcontext()
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env=clean_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    with server, PeakMemory(process.pid) as memory:
        out, err = process.communicate()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if process.returncode:
        last = (err.strip().splitlines() or [f"exit {process.returncode}"])[-1]
        raise BenchFailed(f"{label} failed: {last}")
    server_cpu = server.seconds if server_tag else None
    return Measured(seconds, memory.peak_total, memory.peak_single, out, cpu, server_cpu)


def manage(*args, env=None, label=None, server_tag=None):
    """Run manage.py args as one measured process."""
    label = label or f"manage.py {args[0]}"
    return run([str(ROOT / "manage.py"), *args], env=env, label=label, server_tag=server_tag)


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCPU(Sampler):
    """CPU seconds used by the PostgreSQL backends serving databases whose name contains
    tag (read from /proc; the server must run on this machine). A backend's counters are
    sampled until it exits, so at most one interval of its work is missed."""

    def __init__(self, tag, interval=0.05):
        super().__init__(interval)
        self.tag = tag
        self.used = {}

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.sample()  # the last counters of backends still alive

    @property
    def seconds(self):
        return sum(self.used.values())

    def sample(self):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                if command.startswith("postgres:") and self.tag in command:
                    self.used[entry.name] = _cpu_seconds(entry.name)
            except OSError:
                continue


HEADER = [
    "| approach | rows | seconds | rows/s | ratio to its floor (or as the row says) "
    "| peak memory (PSS, tree) | CPU s (client + server) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]


# The row of a load of orders alone into databases that hold their users and products.
AFTER_PARENTS = "`insert_data --from` CSV, orders alone (users, products stored before)"
RERUN = "`insert_data --from` CSV again, over the finished load (all already present)"
# The rows below compare with a reference of their own, measured in the same run.
TO_ABOVE = "; ratio to the plain-code row above"
CONFLICT = (
    "`insert_data --from` CSV again, over the finished load, every row's data changed "
    "(all rejected as conflicts)"
)
APPEND = "`insert_data --from` CSV, new orders into a table holding as many (parents stored)"
RESUME = (
    "`insert_data --from` CSV again after kill -9 at {committed} of the rows committed; "
    "ratio: its seconds over the fresh CSV load's (target 0.6 or less)"
)
JOIN = "each file into a temporary table, one join for the new and changed rows"


PRINTED = []  # every table line printed in this process, for the docs page (bench.__main__)


def _say(line):
    PRINTED.append(line)
    print(line, flush=True)


class Table:
    """Prints one markdown row per measurement as it ends; a floor row sets the rate the
    rows after it are compared with, unless a row names a reference of its own. A row that
    stored the wrong count stops the run."""

    def __init__(self, expected, header=True):
        self.expected = expected
        self.floor_rate = None
        self.named = {}  # key -> (rows, seconds) of each row added with a key
        if header:
            for line in HEADER:
                _say(line)

    def add(
        self,
        label,
        kind,
        measured,
        stored,
        check=True,
        timed=None,
        *,
        expected=None,
        key=None,
        against=None,
        share_of=None,
    ):
        """timed: the rows the measured process wrote, when others were stored before it
        (the rate and the rows column are of those). expected: the rows stored after this
        row, when not the workload's. key: a name later rows compare with. against: a key,
        the ratio of the rates (as to the floor). share_of: a key, the ratio of the seconds
        (for a row that redoes part of another's work)."""
        expected = self.expected if expected is None else expected
        if check and stored != expected:
            raise BenchFailed(f"{label} stored {stored:,} rows, expected {expected:,}")
        stored = stored if timed is None else timed
        rate = stored / measured.seconds
        cpu = f"{measured.cpu:.1f}"
        if measured.server_cpu is not None:
            cpu += f" + {measured.server_cpu:.1f}"
        if kind == "floor":
            self.floor_rate = rate
        if key is not None:
            self.named[key] = (stored, measured.seconds)
        if share_of is not None:
            ratio = measured.seconds / self._named(share_of)[1]
        elif against is not None:
            rows, seconds = self._named(against)
            ratio = rate / (rows / seconds)
        else:
            ratio = rate / self.floor_rate
        _say(
            f"| {label} | {stored:,} | {measured.seconds:.2f} | {rate:,.0f} | {ratio:.2f} | "
            f"{measured.peak_pss / 2**20:,.0f} MB | {cpu} |"
        )

    def _named(self, key):
        if key not in self.named:
            raise BenchFailed(f"no row named {key!r} was measured before the row that needs it")
        return self.named[key]
