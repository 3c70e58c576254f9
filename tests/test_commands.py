"""The command line as a new user meets it: help, refusals, migrate_all, `test`, make demo."""

import csv
import json
import os
import sqlite3
import subprocess
import sys
from io import StringIO

import pytest
from crossdb.console import concurrency_line
from crossdb.results import LoadResult
from django.core.management import call_command

from core import sources
from tests.conftest import ROOT, all_databases, manage

# --- insert_data --help ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def help_text(tmp_path_factory):
    done = manage("insert_data", "--help", data_dir=tmp_path_factory.mktemp("help"))
    assert done.returncode == 0, done.stderr
    return done.stdout


def section(text, title):
    """The lines of one argparse group, from its title to the next blank line."""
    lines = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
    return lines


def test_help_shows_examples_and_file_formats(help_text):
    examples = section(help_text, "examples")
    assert "insert_data --from DIR" in examples
    assert "insert_data --users 1000 --products 1000 --orders 10000 --seed 7" in examples
    assert "insert_data --from rejects.csv" in examples
    formats = help_text.split("file formats", 1)[1]
    assert "users.csv     id,name,email" in formats  # laid out as written, not re-wrapped
    assert "products.csv  id,name,price" in formats
    assert "orders.csv    id,user_id,product_id,quantity" in formats
    assert "*.jsonl" in formats
    assert "130 after Ctrl-C; 143 after SIGTERM" in help_text


def test_batch_size_has_its_own_group_not_output(help_text):
    assert "--batch-size" in section(help_text, "loading")
    assert "--batch-size" not in section(help_text, "output")
    assert "--rejects" in section(help_text, "output")


# --- refusals before anything is written ----------------------------------------------------


@pytest.fixture
def input_dir(tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "users.csv").write_text("id,name,email\n1,Ann,ann@example.com\n")
    return directory


@pytest.mark.parametrize("option", ["rejects", "report"])
def test_an_output_file_naming_an_input_file_is_refused(migrated_dir, input_dir, option):
    target = input_dir / "users.csv"
    before = target.read_bytes()
    done = manage(
        "insert_data", f"--from={input_dir}", f"--{option}={target}", data_dir=migrated_dir
    )
    error = done.stderr.strip()
    assert done.returncode == 1, done.stdout
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert f"--{option} {target} is one of the input files" in error
    assert target.read_bytes() == before
    assert "stored" not in done.stdout  # refused before the load


def test_a_rejects_file_fed_back_cannot_be_its_own_rejects_file(migrated_dir, tmp_path):
    rejects = tmp_path / "rejects.csv"
    rejects.write_text("table,line,id,reason,name,email,price,user_id,product_id,quantity\n")
    done = manage("insert_data", f"--from={rejects}", f"--rejects={rejects}", data_dir=migrated_dir)
    assert done.returncode == 1
    assert f"--rejects {rejects} is one of the input files" in done.stderr


def test_rejects_and_report_naming_one_file_is_refused(migrated_dir, tmp_path):
    same = tmp_path / "out.csv"
    done = manage("insert_data", f"--rejects={same}", f"--report={same}", data_dir=migrated_dir)
    assert done.returncode == 1
    assert f"--rejects and --report both name {same}; give two files" in done.stderr
    assert not same.exists()


@pytest.mark.parametrize("option", ["--rejects", "--report"])
def test_an_output_fifo_that_nobody_reads_is_refused_at_once_not_waited_on(
    migrated_dir, input_dir, option
):
    """Opening a FIFO for writing waits for a reader, for ever if none comes: the run must
    say so before it reads anything (the timeout only keeps a hang from stopping the suite)."""
    fifo = migrated_dir / "out.fifo"
    os.mkfifo(fifo)
    done = manage(
        "insert_data", f"--from={input_dir}", option, str(fifo), data_dir=migrated_dir, timeout=120
    )
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip() == (
        f"CommandError: {option} {fifo}: a FIFO that no process is reading; "
        "start its reader first, or name a regular file"
    )
    assert "stored" not in done.stdout  # refused before the load
    with sqlite3.connect(migrated_dir / "users.db") as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


@all_databases
def test_source_warnings_are_printed_one_per_line(monkeypatch, input_dir):
    warnings = ["Users.csv looks like users.csv but is not read (names are case-sensitive)"]
    monkeypatch.setattr(sources.FileSource, "warnings", lambda self: warnings, raising=False)
    out, err = StringIO(), StringIO()
    call_command("insert_data", f"--from={input_dir}", "--no-progress", stdout=out, stderr=err)
    assert err.getvalue().splitlines() == [f"warning: {warnings[0]}"]
    assert "1 stored" in out.getvalue()


# --- the summary ----------------------------------------------------------------------------


def result_with(spans):
    result = LoadResult("test")
    for table, (started, finished) in spans.items():  # seconds after an epoch time
        result.tables[table].started = 1_800_000_000 + started
        result.tables[table].finished = 1_800_000_000 + finished
    return result


@pytest.mark.parametrize(
    ("spans", "line"),
    [
        (
            {"users": (0, 2), "products": (1, 3), "orders": (2.5, 4)},
            "Writers at the same time: users+products, products+orders",
        ),
        (
            {"users": (0, 1), "products": (1, 2), "orders": (2, 3)},
            "Writers at the same time: none (each finished before the next began)",
        ),
        ({"users": (0, 1)}, "Writers at the same time: none (one database or none written)"),
    ],
    ids=["overlap", "in-turn", "one-table"],
)
def test_the_concurrency_line_is_always_there_and_says_why(spans, line):
    assert concurrency_line(result_with(spans)) == line


def test_the_summary_title_is_one_line_and_every_line_fits_80_columns(migrated_dir):
    args = ["--users=100000", "--products=10000", "--orders=10", "--seed=7", "--no-progress"]
    done = manage("insert_data", *args, data_dir=migrated_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "insert_data: synthetic (users=100000, products=10000, orders=10, seed=7)"
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[-1].startswith("Writers at the same time: ")


LAST_RUN_STORED = (
    "from crossdb.models import LoadRun; print(LoadRun.objects.latest('finished_at')"
    ".summary['totals']['stored'])"
)


def test_a_run_that_ends_at_once_still_leaves_every_output_whole(migrated_dir, tmp_path):
    """insert_data skips the interpreter's teardown: nothing it wrote may be cut short
    (stdout to a pipe is block-buffered unless PYTHONUNBUFFERED is set, as it is here)."""
    rejects, run_json = tmp_path / "rejects.csv", tmp_path / "run.json"
    done = manage(
        "insert_data",
        "--no-progress",
        f"--rejects={rejects}",
        f"--report={run_json}",
        data_dir=migrated_dir,
        env={"PYTHONUNBUFFERED": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("  "), done.stdout  # the rejected rows
    assert "Writers at the same time: " in done.stdout
    summary = json.loads(run_json.read_text())
    with open(rejects, newline="", encoding="utf-8") as handle:
        rejected = list(csv.DictReader(handle))
    assert summary["totals"]["rejected"] == len(rejected) > 0
    history = manage("shell", "--no-imports", "-c", LAST_RUN_STORED, data_dir=migrated_dir)
    assert history.stdout.split() == [str(summary["totals"]["stored"])], history.stderr


# --- migrate_all ----------------------------------------------------------------------------


ALIASES = {
    "default": "default",
    "users_db": "users",
    "orders_db": "orders",
    "products_db": "products",
}


def said_per_alias(stdout):
    """{alias: what migrate_all said for it, whitespace collapsed, path replaced by FILE}."""
    said, alias = {}, None
    for line in stdout.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if first in ALIASES:
            alias = first
            said[alias] = line
        elif alias and line.startswith(" "):
            said[alias] += " " + line
    return {a: " ".join(text.split()[2:]) for a, text in said.items()}, said


def test_migrate_all_says_which_tables_it_created_where_then_up_to_date(tmp_path):
    first = manage("migrate_all", data_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    states, lines = said_per_alias(first.stdout)
    for alias, name in ALIASES.items():
        assert lines[alias].split()[:2] == [alias, str(tmp_path / f"{name}.db")], first.stdout
    # each domain database also keeps the reference guard's deletion counters and the
    # positions of parent databases its rows depend on (crossdb.causal)
    for alias, table in (
        ("users_db", "users"),
        ("orders_db", "orders"),
        ("products_db", "products"),
    ):
        assert (
            states[alias] == f"created: crossdb_causal_positions, {table}, multids_reference_guard"
        )
    assert states["default"].startswith("created: auth_group, auth_group_permissions,")
    assert "migration(s)" not in first.stdout
    again = manage("migrate_all", data_dir=tmp_path)
    assert said_per_alias(again.stdout)[0] == dict.fromkeys(ALIASES, "up to date"), again.stdout
    assert again.stdout.splitlines()[-1] == "All databases migrated."


def test_migrate_all_fits_80_columns_for_files_in_the_working_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate_all"],
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = said_per_alias(done.stdout)[1]
    assert lines["users_db"].split() == [
        "users_db",
        "users.db",
        "created:",
        "crossdb_causal_positions,",
        "users,",
        "multids_reference_guard",
    ]
    assert all(len(line) <= 80 for line in done.stdout.splitlines()), done.stdout


# --- manage.py test, make demo --------------------------------------------------------------


def test_manage_py_test_says_in_one_line_to_use_make_test(tmp_path):
    done = manage("test", "--keepdb", "core", data_dir=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "run `make test`" in done.stderr


def bench(*args, data_dir):
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=environment(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bench_help_says_what_it_measures_and_shows_examples(tmp_path):
    done = bench("--help", data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "as a ratio to its\nbackend's floor, and its peak memory." in done.stdout
    assert "make bench ARGS='--orders 100000" in done.stdout.split("examples:", 1)[1]
    assert "(default 1,000,000)" in done.stdout


@pytest.mark.parametrize("option", ["--orders", "--scale", "--naive-orders", "--repeat"])
def test_bench_refuses_a_count_below_one_in_one_line(tmp_path, option):
    done = bench(option, "0", data_dir=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"{option} must be 1 or more")
    assert "Traceback" not in done.stderr


def environment(data_dir):
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    return env | {"MULTIDS_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "multids.settings"}


def make_dry_run(target, venv):
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if "pip install" in line and "-e" in line]


def test_make_demo_installs_no_dev_tools_and_make_test_does(tmp_path):
    crossdb = '-e "./django-crossdb[postgres]"'
    assert make_dry_run("demo", tmp_path / "venv") == [
        f"{tmp_path}/venv/bin/python -m pip install --quiet {crossdb} -e ."
    ]
    assert make_dry_run("test", tmp_path / "venv") == [
        f'{tmp_path}/venv/bin/python -m pip install --quiet {crossdb} -e ".[dev]"'
    ]
