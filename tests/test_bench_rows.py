"""The pieces of ``make bench``'s issue-30 rows that decide what a figure stands for: the
files of the conflicting re-run and of the append, the plain-code join, the checks of what
a row did, the state a resumed load must equal, and the ratios a row is shown with.

A full bench takes minutes on full-size files; these run on a few hundred rows.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bench import checks, measure, references, resume
from tests.conftest import ROOT, manage

SIZES = {"users": 50, "products": 10, "orders": 200}
# The shop's workload, its conflicting files and its new orders, made by bench.workload
# under the project's settings (the test settings register a fourth table).
MAKE_FILES = """
import sys, django
django.setup()
from bench import workload
files = workload.build(sys.argv[1], {sizes})
workload.conflicting(files)
workload.appended(files, {sizes})
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench") / "workload"
    subprocess.run(
        [sys.executable, "-c", MAKE_FILES.format(sizes=SIZES), str(directory)],
        env=measure.clean_environment(),
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return directory


def _sibling(files, suffix):
    return files.with_name(files.name + suffix)


def _csv(path):
    with open(path, encoding="utf-8") as handle:
        header, *rows = [line.rstrip("\n").split(",") for line in handle]
    return header, rows


def test_the_conflicting_files_keep_every_id_and_change_every_row(files):
    changed = _sibling(files, "-conflicting")
    for table in SIZES:
        header, before = _csv(files / f"{table}.csv")
        assert _csv(changed / f"{table}.csv")[0] == header
        after = _csv(changed / f"{table}.csv")[1]
        assert [row[0] for row in after] == [row[0] for row in before]
        assert all(old != new for old, new in zip(before, after, strict=True)), table


def test_the_appended_orders_follow_on_and_name_stored_parents(files):
    new = _sibling(files, "-append")
    assert sorted(p.name for p in new.glob("*.csv")) == ["orders.csv"]
    header, orders = _csv(new / "orders.csv")
    stored = {row[0] for row in _csv(files / "orders.csv")[1]}
    ids = [int(row[header.index("id")]) for row in orders]
    assert len(ids) == SIZES["orders"]
    assert min(ids) == max(map(int, stored)) + 1 and ids == sorted(set(ids))
    users = {row[0] for row in _csv(files / "users.csv")[1]}
    products = {row[0] for row in _csv(files / "products.csv")[1]}
    assert {row[header.index("user_id")] for row in orders} <= users
    assert {row[header.index("product_id")] for row in orders} <= products


def _join(source, data_dir, capsys):
    references.sqlite_join(source, data_dir)
    return json.loads(capsys.readouterr().out)


def test_the_plain_code_join_finds_nothing_over_its_own_load_and_every_changed_row(
    files, migrated_dir, capsys
):
    manage("insert_data", "--from", str(files), "--no-progress", data_dir=migrated_dir, check=True)
    total = sum(SIZES.values())
    assert _join(files, migrated_dir, capsys) == {"new": 0, "changed": 0}
    assert _join(_sibling(files, "-conflicting"), migrated_dir, capsys) == {
        "new": 0,
        "changed": total,
    }
    assert _join(_sibling(files, "-append"), migrated_dir, capsys) == {
        "new": SIZES["orders"],
        "changed": 0,
    }


def _tables(data_dir, rows, index=True):
    for table in SIZES:
        with sqlite3.connect(data_dir / f"{table}.db") as db:
            db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, value TEXT)")
            if index:
                db.execute(f"CREATE INDEX {table}_value ON {table} (value)")
            db.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
    return resume.sqlite_digest(data_dir, SIZES)


def test_the_state_digest_is_of_the_rows_and_indexes_not_of_the_order_they_came_in(tmp_path):
    rows = [(i, f"v{i}") for i in range(1, 30_000)]
    digests = {}
    for name, stored, index in (
        ("clean", rows, True),
        ("reversed", rows[::-1], True),
        ("one value changed", [(1, "other"), *rows[1:]], True),
        ("one row missing", rows[:-1], True),
        ("no index", rows, False),
    ):
        (tmp_path / name).mkdir()
        digests[name] = _tables(tmp_path / name, stored, index)
    assert digests["reversed"] == digests["clean"]
    for name in ("one value changed", "one row missing", "no index"):
        assert digests[name] != digests["clean"], name


def test_a_state_other_than_the_clean_load_stops_the_bench():
    state = resume.CleanState(total=200)
    with pytest.raises(measure.BenchFailed, match="no clean load"):
        state.same_as_clean("abc", "the resumed load")
    state.remember_clean("abc")
    state.same_as_clean("abc", "the resumed load")
    with pytest.raises(measure.BenchFailed, match="fresh load left the databases other"):
        state.remember_clean("abd")
    with pytest.raises(measure.BenchFailed, match="resumed load left the databases other"):
        state.same_as_clean("abd", "the resumed load")


def test_the_resume_label_says_where_the_kills_landed():
    state = resume.CleanState(total=200)
    assert state.label() == "?"
    state.killed += [104, 100]
    assert state.label() == "50-52%"
    state.killed = [110, 110]
    assert state.label() == "55%"


def _measured(stdout="", seconds=1.0):
    return measure.Measured(seconds, 0, 0, stdout)


def test_the_verdicts_are_read_from_the_summary_line():
    out = "insert_data: dir\n...\n0 stored, 0 already present, 1,110,000 rejected in 9.1s\n"
    checks.verdicts(_measured(out), "the conflicting re-run", rejected=1_110_000)
    with pytest.raises(measure.BenchFailed, match="expected 0, 1,110,000 and 0"):
        checks.verdicts(_measured(out), "the re-run", present=1_110_000)
    with pytest.raises(measure.BenchFailed, match="no summary line"):
        checks.verdicts(_measured("Traceback"), "the re-run", present=1)


def test_the_join_must_find_what_its_files_hold():
    checks.found(_measured('{"new": 0, "changed": 5}\n'), "the join", changed=5)
    with pytest.raises(measure.BenchFailed, match="found 0 new and 0 changed rows, expected"):
        checks.found(_measured('{"new": 0, "changed": 0}\n'), "the join", changed=5)
    with pytest.raises(measure.BenchFailed, match="printed no totals"):
        checks.found(_measured(""), "the join")


def test_a_row_is_compared_with_its_floor_its_reference_or_a_time(capsys):
    table = measure.Table(100)
    table.add("floor", "floor", _measured(seconds=1.0), 100)
    table.add("fresh", "", _measured(seconds=2.0), 100, key="from")
    table.add("join", "", _measured(seconds=0.5), 100, key="join")
    table.add("re-run", "", _measured(seconds=2.0), 100, against="join")
    table.add("append", "", _measured(seconds=1.0), 150, timed=50, expected=150)
    table.add("resume", "", _measured(seconds=1.2), 100, share_of="from")
    ratios = [line.split(" | ")[4] for line in capsys.readouterr().out.splitlines()[2:]]
    assert ratios == ["1.00", "0.50", "2.00", "0.25", "0.50", "0.60"]
    with pytest.raises(measure.BenchFailed, match="stored 100 rows, expected 150"):
        table.add("append", "", _measured(), 100, expected=150)


def test_the_killed_group_is_waited_for_until_none_of_it_is_alive():
    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    time.sleep(0.2)
    assert resume._alive_in(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resume.wait_until_gone(process.pid)
    assert not resume._alive_in(process.pid)
