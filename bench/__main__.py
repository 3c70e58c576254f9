"""Run the benchmark and print, from one run, each approach as rows/s, as a ratio to its
backend's floor, and its peak memory.

    python -m bench [--orders N] [--scale N] [--naive-orders N] [--repeat N] [--no-postgres]

The floor is the workload stored with the real schema's indexes as cheaply as plain code
can (``bench.references``: bare tables, one transaction per table, indexes built after the
data, no validation). Every row is one whole process, start-up included, because that is
what a user waits for; peak memory is the summed PSS of its process tree (insert_data and
its writers). The PostgreSQL half (``bench.postgres``) follows; it needs the server
``.ci/setup-postgres.sh`` starts, and says so in one line when it cannot reach it.

The rows over a finished load compare with a reference of their own, measured in the same
run, as their labels say: the re-runs (all present; every row changed, all rejected) with
plain code that loads each file into a temporary table and finds new and changed rows in
one join, the append of new orders with plain code into the indexed table, and the resume
after a kill -9 at half the rows committed with the fresh load's seconds (``bench.resume``;
its end state must equal the fresh load's). On PostgreSQL pgloader, when installed, loads
the same files beside insert_data. ``--scale N`` multiplies every size by N.
"""

import argparse
import compileall
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import django

from bench import checks, measure, resume

ROOT = Path(__file__).resolve().parent.parent
OUT = measure.OUT
TABLES = ("users", "products", "orders")


def manage(data_dir, *args, env=None):
    """Start manage.py against the SQLite files in data_dir (used by bench.experiments)."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=measure.clean_environment({"MULTIDS_DATA_DIR": str(data_dir)} | (env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def cache_bytecode():
    """Compile the project's modules once, so each measured process starts from cached
    bytecode, as every run after the first does on a machine that writes Python's cache.

    Installed packages come with theirs (pip compiles them); the project runs from its
    source tree, and where PYTHONDONTWRITEBYTECODE is set nothing caches it, so each
    measured start-up would compile the project again (about 0.1 s of every row).
    """
    for package in ("core", "multids", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def fresh_dir(name):
    data_dir = OUT / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    return data_dir


def fresh_databases(name):
    """A migrated data directory; migration is not part of any measurement."""
    data_dir = fresh_dir(name)
    process = manage(data_dir, "migrate_all")
    _out, err = process.communicate()
    if process.returncode:
        sys.exit(f"bench: migrate_all failed: {err.strip()}")
    return data_dir


def with_parents(data_dir, parents_dir):
    """data_dir once the files of parents_dir (the parent tables', or the whole workload's
    for a re-run) are loaded into it (not measured)."""
    process = manage(data_dir, "insert_data", "--from", str(parents_dir), "--no-progress")
    _out, err = process.communicate()
    if process.returncode:
        sys.exit(f"bench: loading {parents_dir} failed: {err.strip()}")
    return data_dir


def _count(data_dir):
    total = 0
    for table in TABLES:
        with sqlite3.connect(Path(data_dir) / f"{table}.db") as db:
            total += db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return total


class Step(NamedTuple):
    """One SQLite row: run(data_dir) is measured on what prepare(name) made; check(data_dir,
    Measured) then verifies what it did (not measured); options go to on_row. A label may
    be a function, called once every round has run (the resume row's says where it was
    killed)."""

    label: str | Callable
    run: Callable
    prepare: Callable
    kind: str = ""
    check: Callable | None = None
    options: dict | None = None


def _loader(source, label):
    """A measured `insert_data --from source` on the data directory it is given."""
    return lambda data_dir: measure.manage(
        "insert_data",
        "--from",
        str(source),
        "--no-progress",
        env={"MULTIDS_DATA_DIR": str(data_dir)},
        label=label,
    )


def _reference(kind, *args, label):
    """A measured plain-code reference (bench.references) on the data directory it is given."""
    return lambda data_dir: measure.run(
        ["-m", "bench.references", kind, *map(str, args), str(data_dir)], label=label
    )


def sqlite_rows(workload_dir, sizes, on_row, repeat=1):
    """Measure each SQLite row repeat times, the approaches in turn; on_row(label, kind,
    median Measured, rows stored, **options) per row at the end (kind "floor" marks the
    floor, first)."""
    state = resume.CleanState(sum(sizes.values()))
    steps = _fresh_steps(workload_dir, sizes, state) + _steps_over_a_load(
        workload_dir, sizes, state
    )
    runs = [[] for _ in steps]
    stored = [set() for _ in steps]
    for round_ in range(1, repeat + 1):
        measure.say_round("SQLite", round_, repeat)
        for index, step in enumerate(steps):
            data_dir = step.prepare(f"sqlite-{index}")
            measured = step.run(data_dir)
            if step.check:
                step.check(data_dir, measured)
            runs[index].append(measured)
            stored[index].add(_count(data_dir))
    for index, step in enumerate(steps):
        counts = stored[index]
        on_row(
            step.label() if callable(step.label) else step.label,
            step.kind,
            measure.median(runs[index]),
            min(counts) if len(counts) > 1 else max(counts),
            **(step.options or {}),
        )


def _fresh_steps(workload_dir, sizes, state):
    """The loads into empty databases: the floor, today's reference, insert_data's."""
    from bench.postgres import _insert_data_args

    schema = fresh_databases("schema")
    steps = [
        Step(
            "SQLite: bare rowid tables, indexes built after (floor)",
            lambda d: measure.run(
                ["-m", "bench.references", "sqlite-floor", str(workload_dir), str(d), str(schema)],
                label="the SQLite floor",
            ),
            fresh_dir,
            kind="floor",
        ),
        Step(
            "SQLite: plain sqlite3 executemany into the migrated schema (today's reference)",
            _reference("sqlite-today", workload_dir, label="the SQLite reference"),
            fresh_databases,
        ),
    ]
    for kind, label in (
        ("from", "`insert_data --from` CSV"),
        ("jsonl", "`insert_data --from` JSONL"),
        ("synthetic", "`insert_data` synthetic"),
    ):
        fresh_csv = kind == "from"  # the clean state and the time the resume row compares with
        steps.append(
            Step(
                f"SQLite: {label} (today's loader)",
                lambda d, kind=kind: measure.manage(
                    *_insert_data_args(kind, workload_dir, sizes),
                    env={"MULTIDS_DATA_DIR": str(d)},
                    label=f"insert_data ({kind})",
                ),
                fresh_databases,
                check=_as_clean(state, "a fresh load", first=True) if fresh_csv else None,
                options={"key": "from"} if fresh_csv else None,
            )
        )
    return steps


def _steps_over_a_load(workload_dir, sizes, state):
    """The loads into databases holding rows: orders alone, the re-runs and their plain-code
    join, the append and its reference, the resume after a kill."""
    from bench import workload

    parents_dir, children_dir = workload.by_level(workload_dir)
    changed_dir = workload.conflicting(workload_dir)
    new_orders = workload.appended(workload_dir, sizes)
    total = sum(sizes.values())
    appended = {"timed": sizes["orders"], "expected": total + sizes["orders"]}

    def loaded(name):  # a finished load of the workload (not measured)
        return with_parents(fresh_databases(name), workload_dir)

    return [
        Step(
            f"SQLite: {measure.AFTER_PARENTS}",
            _loader(children_dir, "insert_data (orders alone)"),
            lambda name: with_parents(fresh_databases(name), parents_dir),
            options={"timed": workload.rows_in(children_dir)},
        ),
        Step(
            f"SQLite: plain sqlite3 executemany, {measure.JOIN} (reference of the row below)",
            _reference("sqlite-join", workload_dir, label="the SQLite join"),
            loaded,
            check=lambda _d, m: checks.found(m, "the SQLite join"),
            options={"key": "join"},
        ),
        Step(
            f"SQLite: {measure.RERUN}{measure.TO_ABOVE}",
            _loader(workload_dir, "insert_data (re-run)"),
            loaded,
            check=_as_clean(state, "the SQLite re-run", present=total),
            options={"against": "join"},
        ),
        Step(
            f"SQLite: plain sqlite3 executemany, {measure.JOIN}, every row changed "
            "(reference of the row below)",
            _reference("sqlite-join", changed_dir, label="the SQLite join of changed rows"),
            loaded,
            check=lambda _d, m: checks.found(m, "the SQLite join", changed=total),
            options={"key": "conflict-join"},
        ),
        Step(
            f"SQLite: {measure.CONFLICT}{measure.TO_ABOVE}",
            _loader(changed_dir, "insert_data (conflicting re-run)"),
            loaded,
            check=_as_clean(state, "the conflicting SQLite re-run", rejected=total),
            options={"against": "conflict-join"},
        ),
        Step(
            "SQLite: plain sqlite3 executemany of the new orders into the indexed table "
            "(reference of the row below)",
            _reference("sqlite-today", new_orders, label="the SQLite append reference"),
            loaded,
            options=appended | {"key": "append"},
        ),
        Step(
            f"SQLite: {measure.APPEND}{measure.TO_ABOVE}",
            _loader(new_orders, "insert_data (new orders)"),
            loaded,
            check=lambda _d, m: checks.verdicts(m, "the append", stored=sizes["orders"]),
            options=appended | {"against": "append"},
        ),
        Step(
            lambda: f"SQLite: {measure.RESUME.format(committed=state.label())}",
            _loader(workload_dir, "insert_data (resume)"),
            _killed_at_half(workload_dir, sizes, state),
            check=_as_clean(state, "the resumed SQLite load"),
            options={"share_of": "from"},
        ),
    ]


def _as_clean(state, label, first=False, **verdicts):
    """A check: insert_data's summary gave verdicts (bench.checks), and the databases hold
    what the first fresh load left (first: this is that load)."""

    def check(data_dir, measured):
        if verdicts:
            checks.verdicts(measured, label, **verdicts)
        digest = resume.sqlite_digest(data_dir, TABLES)
        if first:
            state.remember_clean(digest)
        else:
            state.same_as_clean(digest, label)

    return check


def _killed_at_half(workload_dir, sizes, state):
    """A prepare step: the fresh CSV load, SIGKILLed once half the rows are committed (not
    measured); the rows committed then go to state."""
    from bench.postgres import _insert_data_args

    def prepare(name):
        data_dir = fresh_databases(name)
        committed = resume.sqlite_committed(data_dir, TABLES)
        args = _insert_data_args("from", workload_dir, sizes)
        resume.kill_at_half(args, {"MULTIDS_DATA_DIR": str(data_dir)}, committed, state.total)
        state.killed.append(committed())
        return data_dir

    return prepare


def naive_row(count):
    data_dir = fresh_databases("naive")
    measured = measure.run(
        ["-m", "bench.naive", str(count)],
        env={"MULTIDS_DATA_DIR": str(data_dir)},
        label="the naive loader",
    )
    seconds = float(measured.stdout.strip())  # the loop alone, without start-up
    with sqlite3.connect(Path(data_dir) / "orders.db") as db:
        orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
    return measured._replace(seconds=seconds), orders  # its parents are set-up, not timed


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    django.setup()  # the workload comes from core.sources, which needs the models
    from bench import workload

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  make bench\n"
        "  make bench ARGS='--orders 100000 --repeat 1 --no-postgres'\n"
        "  make bench ARGS='--scale 10 --repeat 1'      # the 11.1M-row workload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=workload.SIZES["orders"],
        help=f"orders in the workload, beside {workload.SIZES['users']:,} users and "
        f"{workload.SIZES['products']:,} products (default {workload.SIZES['orders']:,})",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        metavar="N",
        help="multiply every size (users, products and --orders) by N: --scale 10 is the "
        "11.1M-row workload (default 1)",
    )
    parser.add_argument(
        "--naive-orders",
        type=int,
        default=2_000,
        help="orders for the naive thread-pool row, which is slow (default 2,000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each approach, taken in turn; each row shows the median (default 3)",
    )
    parser.add_argument(
        "--table",
        type=Path,
        default=ROOT / "docs" / "bench-latest.md",
        metavar="FILE",
        help="where the run's table is written, for docs/performance.md to include "
        "(default docs/bench-latest.md)",
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip the PostgreSQL half (it needs the server of .ci/setup-postgres.sh; its "
        "pgloader row needs pgloader on PATH, and is left out without it)",
    )
    args = parser.parse_args()
    for name in ("repeat", "orders", "naive_orders", "scale"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    sizes = {t: n * args.scale for t, n in dict(workload.SIZES, orders=args.orders).items()}
    print(f"building workload {sizes} ...", flush=True)
    scaled = f"-x{args.scale}" if args.scale > 1 else ""  # scale 1 keeps its files' name
    workload_dir = workload.build(OUT / f"workload-{args.orders}{scaled}", sizes)
    workload.as_jsonl(workload_dir)  # the same rows as JSONL, for the JSONL rows
    cache_bytecode()

    before = _load_average()
    print(f"load average before: {before}", flush=True)
    try:
        _measure(args, workload_dir, sizes)
    finally:
        _write_table(args, before)


def _write_table(args, before):
    """The table printed so far, with what it was measured on, to args.table (a page of
    docs/): the figures the docs quote are the last run's, never copied by hand."""
    if not measure.PRINTED:
        return
    page = [
        "# The last `make bench` run",
        "",
        "Written by `make bench` (`python -m bench`); docs/performance.md explains each row.",
        f"Arguments: `{' '.join(sys.argv[1:]) or '(defaults)'}`; "
        f"load average before {before}, after {_load_average()}.",
        "",
        *measure.PRINTED,
        "",
    ]
    try:
        args.table.write_text("\n".join(page))
    except OSError as exc:
        print(f"bench: the table was not written to {args.table}: {exc.strerror}")
        return
    print(f"table written to {args.table}")


def _measure(args, workload_dir, sizes):
    """Every row: SQLite's, then PostgreSQL's unless --no-postgres."""
    from bench import postgres

    total = sum(sizes.values())
    rows = measure.Table(total)
    try:
        sqlite_rows(workload_dir, sizes, rows.add, args.repeat)
        naive, naive_rows = naive_row(args.naive_orders)
        rows.add(
            "SQLite: naive thread pool, `objects.create()` per row (loop only)",
            "",
            naive,
            naive_rows,
            check=False,
        )
    except measure.BenchFailed as exc:
        sys.exit(f"bench: {exc}")
    if args.no_postgres:
        return
    pg = measure.Table(total, header=False)
    try:
        postgres.run_postgres_bench(
            workload_dir,
            sizes,
            OUT / "postgres",
            lambda label, *rest, **options: pg.add(f"PostgreSQL: {label}", *rest, **options),
            args.repeat,
        )
    except (postgres.BenchError, measure.BenchFailed, postgres.psycopg.Error) as exc:
        sys.exit(
            f"bench: PostgreSQL not measured: {str(exc).strip().splitlines()[0]} "
            "(make bench ARGS=--no-postgres measures SQLite only)"
        )


def _load_average():
    """The machine's 1-minute load average: a shared machine makes every figure slower."""
    return f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
