"""The loader's processes end with their run: kill -9, SIGTERM and Ctrl-C, raced for real.

Each test starts ``manage.py insert_data`` in a subprocess with its own data (SQLite files
in a temporary directory, or fresh PostgreSQL databases), waits until orders are landing,
notes the writer processes, signals the main process, and then asserts:

* no process of that tree, nor any thread of one, is left 2 s later (a zombie waiting to
  be reaped holds nothing and counts as gone);
* every database is free: a SQLite write lock can be taken with no wait at all, and the
  PostgreSQL server has no connection left to the run's databases;
* SIGTERM and SIGINT end with exit 143 / 130 and one line on stderr saying what was kept
  and what to run; no process wrote a traceback;
* ``check_integrity`` is clean and the same command run again finishes the load at once
  (under the 30 s busy timeout a leftover lock would cost, after which it would fail), with
  every row stored.

Negative control: with the parent watch switched off (``MULTIDS_TEST_NO_PARENT_WATCH=1``,
which tests/launch.py turns into ``processes.PARENT_WATCH``) the writers outlive a killed
main process. With only the kernel's part off (``=prctl``) the checks in the writers' waits
still end them,
within 5 s rather than 2 (a writer notices after the statement it is running).
"""

import contextlib
import glob
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from crossdb.integrity import check_integrity
from crossdb.loading import gate as gates
from crossdb.loading import load, processes
from crossdb.loading.gate import JOIN_LIMIT, Aborted, Gate, Orphaned, ParentsTooSlow
from crossdb.loading.processes import ParentWatch
from crossdb.loading.writers import BulkWriter

from core.sources import SyntheticSource
from tests.conftest import ROOT, all_databases
from tests.test_postgres import VARIABLES, pg_databases, postgres_server  # noqa: F401

SIZE = {"users": 20_000, "products": 2_000, "orders": 100_000}
LOAD = ["insert_data", "--no-progress", *(f"--{t}={n}" for t, n in SIZE.items())]
LOAD.append("--batch-size=5000")
GONE_WITHIN = 2.0  # seconds after the signal
# Without prctl a writer notices between statements: after the batch it is writing, at most.
GONE_WITHIN_BY_CHECKS = 5.0
# A lock left behind makes the re-run wait out SQLite's 30 s busy timeout and then fail with
# "database is locked"; the re-run itself takes 4-6 s on an idle 2-core machine (more when
# other work shares it, hence the margin).
RERUN_LIMIT = 30.0
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class SQLite:
    """The run's databases as SQLite files in data_dir."""

    name = "sqlite"

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.env = {}

    def count(self, table):
        with contextlib.closing(sqlite3.connect(self.data_dir / f"{table}.db", timeout=5)) as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def assert_released(self):
        """Take each file's write lock with a zero busy timeout: fails if anyone holds it."""
        for path in sorted(self.data_dir.glob("*.db")):
            db = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                pytest.fail(f"{path.name} is still locked after the run ended: {exc}")
            finally:
                db.close()


class Postgres:
    """The run's databases on the PostgreSQL server, one per alias."""

    name = "postgres"

    def __init__(self, env, admin_url):
        self.env = env
        self.admin_url = admin_url
        self.names = [env[v].rsplit("/", 1)[1] for v in VARIABLES.values()]

    def count(self, table):
        url = self.env[VARIABLES[f"{table}_db"]]
        with psycopg.connect(url) as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def connections(self):
        with psycopg.connect(self.admin_url) as db:
            return db.execute(
                "SELECT datname, pid, state FROM pg_stat_activity WHERE datname = ANY(%s)",
                (self.names,),
            ).fetchall()

    def assert_released(self):
        deadline = time.monotonic() + GONE_WITHIN
        while (left := self.connections()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == [], f"connections left on the server after the run ended: {left}"


def environment(data_dir, extra):
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    return env | {
        "MULTIDS_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "multids.settings",
        **extra,
    }


def manage(*args, data_dir, env, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "launch.py"), *args],
        env=environment(data_dir, env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def children(pid):
    """Pids whose parent is pid (/proc/<pid>/task/*/children, or a scan of /proc)."""
    files = glob.glob(f"/proc/{pid}/task/*/children")
    if files:
        found = set()
        for name in files:
            with open(name) as handle:
                found.update(int(p) for p in handle.read().split())
        return found
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.split("/")[2]))
    return found


def descendants(pid):
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _state(stat_path):
    """The one-letter state in a /proc stat file, or None once the task is gone."""
    try:
        with open(stat_path) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def running(pid):
    """Whether any thread of pid is live (a zombie waiting to be reaped holds nothing).

    Every thread counts, not only the main one: when a process is killed its main thread can
    show "Z" while another thread (a queue's feeder, say) is still on its way out, and the
    open files, with their SQLite locks, are released only when the last thread has gone.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_state(f"/proc/{pid}/task/{tid}/stat") not in (None, "Z", "X") for tid in tasks)


def wait_until_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def start_load(db, data_dir, env_extra=None):
    """Start the load in its own session; return it once orders are landing, with its writers."""
    err = open(data_dir / "stderr.txt", "w+")  # not a pipe: a writer that lived on would hold it
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "launch.py"), *LOAD],
        env=environment(data_dir, db.env | (env_extra or {})),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if db.count("orders"):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the load ended before it could be interrupted: make it larger"
    assert db.count("orders") < SIZE["orders"]
    writers = descendants(process.pid)
    assert len(writers) >= 3, f"expected the three writer processes, found {writers}"
    return process, writers, err


def interrupt_and_judge(db, data_dir, sig):
    process, writers, err = start_load(db, data_dir)
    landed = {t: db.count(t) for t in SIZE}
    if sig == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    else:
        os.kill(process.pid, sig)  # the main process only: its writers must follow it
    signalled = time.monotonic()
    try:
        code = process.wait(timeout=GONE_WITHIN)
    except subprocess.TimeoutExpired:
        code = None
    left = wait_until_gone(writers | {process.pid}, GONE_WITHIN - (time.monotonic() - signalled))
    gone_after = time.monotonic() - signalled
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"processes still running {GONE_WITHIN} s after {sig.name}: {left}"
    err.seek(0)
    stderr = err.read()
    assert "Traceback" not in stderr, stderr
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == EXIT_CODES[sig], stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert "committed batches are kept" in lines[0]
        assert "run the same command again to finish" in lines[0]
    db.assert_released()
    check = manage(
        "check_integrity", "--json", str(data_dir / "check.json"), data_dir=data_dir, env=db.env
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads((data_dir / "check.json").read_text())["ok"]
    began = time.monotonic()
    rerun = manage(*LOAD, data_dir=data_dir, env=db.env)
    rerun_seconds = time.monotonic() - began
    assert rerun.returncode == 0, rerun.stderr
    assert "locked" not in rerun.stdout + rerun.stderr
    assert rerun_seconds < RERUN_LIMIT, f"the re-run took {rerun_seconds:.1f} s"
    assert {t: db.count(t) for t in SIZE} == SIZE
    print(
        f"\n{db.name} {sig.name} with {landed} stored: {len(writers)} writers gone "
        f"{gone_after:.2f} s after the signal, exit {code}, re-run {rerun_seconds:.1f} s"
    )


SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]


@pytest.fixture
def sqlite_db(migrated_dir):
    return SQLite(migrated_dir)


@pytest.fixture
def postgres_db(pg_databases, postgres_server, tmp_path):  # noqa: F811
    """Fresh databases, loaded batch by batch: into the empty orders table a load would
    otherwise copy every order in one transaction, in a fraction of a second, too short to
    be interrupted reliably here (tests/test_segment.py interrupts that one on purpose)."""
    env = pg_databases() | {"MULTIDS_LOAD_SEGMENT_MB": "0"}
    done = manage("migrate_all", data_dir=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return Postgres(env, postgres_server)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_sqlite_writers_end_with_the_run(sqlite_db, sig):
    interrupt_and_judge(sqlite_db, sqlite_db.data_dir, sig)


@pytest.mark.postgres
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_postgres_writers_end_with_the_run(postgres_db, tmp_path, sig):
    interrupt_and_judge(postgres_db, tmp_path, sig)


def test_the_checks_in_the_waits_end_the_writers_without_prctl(sqlite_db):
    """Where PR_SET_PDEATHSIG does not exist, the parent checks alone stop the writers."""
    process, writers, _err = start_load(
        sqlite_db, sqlite_db.data_dir, {"MULTIDS_TEST_NO_PARENT_WATCH": "prctl"}
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    left = wait_until_gone(writers, GONE_WITHIN_BY_CHECKS)
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"writers still running {GONE_WITHIN_BY_CHECKS} s after kill -9: {left}"
    sqlite_db.assert_released()


def test_negative_control_without_the_parent_watch_writers_outlive_the_run(sqlite_db):
    process, writers, _err = start_load(
        sqlite_db, sqlite_db.data_dir, {"MULTIDS_TEST_NO_PARENT_WATCH": "1"}
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(GONE_WITHIN)
    left = {p for p in writers if running(p)}
    os.killpg(process.pid, signal.SIGKILL)  # the writers are still in the session: clean up
    wait_until_gone(writers, 5)
    print(f"\nnegative control: {len(left)} of {len(writers)} writers outlived kill -9 by 2 s")
    # The users and products writers may have ended by themselves: each is told its table's
    # end once the orders are read, and the orders were landing. The orders writer, which
    # waits for batches that never come, must outlive the run.
    assert left


# The main thread leaves with the raw exit syscall (one thread, unlike os._exit) while
# another thread holds the write lock: the state in which a killed writer can be seen.
HALF_EXITED = """
import ctypes, platform, sqlite3, sys, threading, time
def hold():
    db = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(60)
threading.Thread(target=hold).start()
time.sleep(0.2)
ctypes.CDLL(None).syscall({"x86_64": 60, "aarch64": 93}[platform.machine()], 0)
"""


@pytest.mark.skipif(
    os.uname().machine not in ("x86_64", "aarch64"), reason="the exit syscall's number"
)
def test_a_process_whose_main_thread_is_a_zombie_runs_while_another_thread_holds_a_lock(
    tmp_path,
):
    """What the lock checks rely on: "gone" waits for the last thread, not the main one."""
    path = tmp_path / "held.db"
    sqlite3.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HALF_EXITED, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        deadline = time.monotonic() + 10
        while _state(f"/proc/{holder.pid}/stat") != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(f"/proc/{holder.pid}/stat") == "Z"  # what a main-thread check saw
        assert running(holder.pid)
        with pytest.raises(pytest.fail.Exception, match="held.db is still locked"):
            SQLite(tmp_path).assert_released()
    finally:
        holder.kill()
        holder.wait()
    assert not running(holder.pid)
    SQLite(tmp_path).assert_released()


# --- the bounds of the wait for parents, in one process ---------------------------------------


def gate(limit, watch=None):
    committed = {"users": multiprocessing.Value("q", 0, lock=False)}
    made = Gate(committed, {}, multiprocessing.Event(), watch, limit=limit)
    made.needs = {"users": 1}
    return made


def test_the_wait_for_parents_ends_in_a_clear_error_after_its_bound():
    began = time.monotonic()
    with pytest.raises(ParentsTooSlow, match=r"waited 0.3 s for users batch 1 to be committed"):
        gate(0.3).wait_for_parents()
    assert 0.3 <= time.monotonic() - began < 2


def test_the_wait_for_parents_stops_when_the_main_process_is_gone():
    """A watch for a parent that is not ours any more (we were re-parented) stops the wait."""
    not_our_parent = ParentWatch(os.getppid() + 1)
    with pytest.raises(Orphaned):
        gate(60, not_our_parent).wait_for_parents()


def test_the_wait_for_parents_stops_when_the_run_is_aborted():
    stopping = gate(60)
    stopping.abort.set()
    with pytest.raises(Aborted):
        stopping.wait_for_parents()


def queued(*jobs):
    """An Inbox holding jobs, then the end of the run."""
    inbox = multiprocessing.Queue()
    for job in (*jobs, None):
        inbox.put(job)
    time.sleep(0.05)  # the queue's feeder thread has put them in the pipe
    return processes.Inbox(inbox, multiprocessing.Event(), ParentWatch(os.getppid()))


def job(seq, users_batches):
    return processes.Job(seq, [], [(seq,)], {"users": users_batches})


def commit_users_after(waiting, seconds, batches, then=()):
    """From a thread: after `seconds`, `batches` users batches are committed in waiting's
    view; then, for each (seconds, batches) of then, so many more after so long."""

    def commit():
        for pause, count in ((seconds, batches), *then):
            time.sleep(pause)
            waiting.committed["users"].value = count

    thread = threading.Thread(target=commit)
    thread.start()
    return thread


def test_jobs_queued_while_the_parents_commit_join_the_wait_and_extend_it():
    """Each queued job is offered to the open transaction; the wait then also covers its
    parents, so it ends only once the last joined job's parents are committed."""
    waiting = gate(10)
    waiting.inbox = queued(job(2, 2), job(3, 3))
    offered = []
    committer = commit_users_after(waiting, 0.3, 2, then=[(0.5, 3)])
    waiting.wait_for_parents(lambda j: offered.append(j.seq) or True)
    assert offered == [2, 3]
    assert waiting.needs == {"users": 3}
    assert waiting.committed["users"].value == 3  # it waited past batch 2 for batch 3
    committer.join()


def test_a_job_refused_by_the_transaction_stays_next_and_none_joins_after_it():
    waiting = gate(10)
    waiting.inbox = queued(job(2, 1), job(3, 1))
    offered = []
    committer = commit_users_after(waiting, 0.3, 1)
    waiting.wait_for_parents(lambda j: offered.append(j.seq) and False)
    committer.join()
    assert offered == [2]
    assert [waiting.inbox.next().seq, waiting.inbox.next().seq, waiting.inbox.next()] == [
        2,
        3,
        None,
    ]


def test_no_job_joins_once_the_parents_are_committed_and_at_most_join_limit_share_one():
    ready = gate(10)
    ready.committed["users"].value = 1
    ready.inbox = queued(job(2, 1))
    ready.wait_for_parents(lambda j: pytest.fail("joined although the parents were committed"))
    assert ready.inbox.next().seq == 2
    waiting = gate(10)
    waiting.inbox = queued(*(job(seq, 1) for seq in range(2, JOIN_LIMIT + 5)))
    offered = []
    committer = commit_users_after(waiting, 0.5, 1)
    waiting.wait_for_parents(lambda j: offered.append(j.seq) or True)
    committer.join()
    assert len(offered) == JOIN_LIMIT - 1  # the current job and JOIN_LIMIT - 1 more
    assert waiting.inbox.next().seq == JOIN_LIMIT + 1


def test_a_wait_with_the_end_of_the_run_queued_sleeps_instead_of_spinning():
    waiting = gate(10)
    waiting.inbox = queued()  # only the end of the run
    committer = commit_users_after(waiting, 0.5, 1)
    cpu = time.process_time()
    waiting.wait_for_parents(lambda j: pytest.fail("the end of the run was offered"))
    used = time.process_time() - cpu
    committer.join()
    assert used < 0.25, f"{used:.2f} CPU seconds in a 0.5 s wait"
    assert waiting.inbox.next() is None


def test_a_transaction_that_takes_the_whole_table_waits_for_each_job_until_the_end():
    """keep_joining (a load segment, crossdb.loading.segment) takes the jobs as they come, also
    those sent after it began waiting, extends the wait to each one's parents, and stops with
    the end of the run next."""
    waiting = gate(10)
    channel = multiprocessing.Queue()
    waiting.inbox = processes.Inbox(channel, multiprocessing.Event(), ParentWatch(os.getppid()))
    channel.put(job(2, 2))

    def send_later():
        time.sleep(0.5)  # longer than one poll of the queue
        channel.put(job(3, 4))
        channel.put(None)

    sender = threading.Thread(target=send_later)
    sender.start()
    offered = []
    waiting.keep_joining(lambda j: offered.append(j.seq) or True, time.monotonic() + 10)
    sender.join()
    assert offered == [2, 3]
    assert waiting.needs == {"users": 4}
    assert waiting.inbox.next() is None


def test_keep_joining_leaves_a_refused_job_next_and_stops_at_its_deadline():
    refusing = gate(10)
    refusing.inbox = queued(job(2, 1), job(3, 5), job(4, 1))
    offered = []
    refusing.keep_joining(lambda j: offered.append(j.seq) or j.seq == 2, time.monotonic() + 10)
    assert offered == [2, 3]
    assert refusing.needs == {"users": 1}  # job 3's parents left the wait with it
    assert [refusing.inbox.next().seq, refusing.inbox.next().seq] == [3, 4]
    late = gate(10)
    late.inbox = queued(job(2, 1))
    late.keep_joining(lambda j: pytest.fail("joined after the deadline"), time.monotonic())
    assert late.inbox.next().seq == 2


def test_keep_joining_stops_when_the_run_is_aborted_or_the_main_process_is_gone():
    stopping = gate(10)
    stopping.inbox = queued()
    stopping.abort.set()
    with pytest.raises(Aborted):
        stopping.keep_joining(lambda j: True, time.monotonic() + 10)
    orphaned = gate(10, ParentWatch(os.getppid() + 1))
    orphaned.inbox = queued()
    with pytest.raises(Orphaned):
        orphaned.keep_joining(lambda j: True, time.monotonic() + 10)


@all_databases
def test_a_joining_job_that_needs_a_second_look_waits_for_its_own_parents():
    """Job 2 joins job 1's transaction, then clashes (an id twice): everything rolls back,
    job 1 is written on its own and job 2 goes back to the queue, never committed while
    users batch 2, which it names, is not."""
    from core.models import Order

    committed = {
        "users": multiprocessing.Value("q", 0, lock=False),
        "products": multiprocessing.Value("q", 1, lock=False),
    }
    first = processes.Job(1, [1], [(1, 1, 1, 1)], {"users": 1, "products": 1})
    clashing = processes.Job(2, [2, 3], [(2, 1, 1, 1), (2, 1, 1, 1)], {"users": 2, "products": 1})
    waiting = Gate(committed, {}, multiprocessing.Event(), limit=10, inbox=queued(clashing))
    waiting.needs = dict(first.after)
    writer = load.writer_for("orders", "orders_db", waiting)
    committer = commit_users_after(waiting, 0.3, 1)  # users batch 2 never commits
    written = writer.write(first)
    committer.join()
    assert sorted(Order.objects.values_list("id", flat=True)) == [1]
    assert written == processes.Written(1, 0, [])
    assert waiting.needs == first.after
    assert waiting.inbox.next() == clashing


@all_databases
def test_a_parent_writer_that_hangs_fails_the_run_with_that_error(monkeypatch):
    """The orders writer gives up on a stuck users writer, in its own transaction, cleanly."""
    original = BulkWriter.write
    calls = []

    def write(self, job):
        if self.table == "users":
            calls.append(1)
            if len(calls) == 2:
                time.sleep(3)  # the second users batch hangs past the orders writer's bound
        return original(self, job)

    monkeypatch.setattr(BulkWriter, "write", write)
    monkeypatch.setattr(gates, "PARENT_WAIT_SECONDS", 0.5)  # the writers are forked: inherited
    with pytest.raises(load.LoadError, match=r"orders writer .*: waited 0.5 s for users batch"):
        load.load(SyntheticSource(users=400, products=10, orders=2000), batch_size=200)
    assert check_integrity().ok
