"""What a person sees in an 80-column terminal: bars redrawn in place, then the summary.

The commands run inside a detached tmux session (its own server socket, 80x30), and the
test reads the screen and its scrollback with ``capture-pane``, as a person would see them.
``.ci/setup-tmux.sh`` installs tmux; without it these tests skip, except in CI (``CI`` set),
where they fail.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT, manage
from tests.test_postgres import _in_ci

WIDTH, HEIGHT = 80, 30
LOAD = ["--users=20000", "--products=2000", "--orders=200000", "--batch-size=5000"]
BAR_LINE = re.compile(r"^(users|products|orders)\s+\S*[━╸╺]")
DONE = "=== exit"


@pytest.fixture
def tmux():
    """Run one shell command in a fresh 80x30 tmux session; yield (start, screen, history)."""
    if shutil.which("tmux") is None:
        reason = "tmux is not installed; run: bash .ci/setup-tmux.sh"
        if _in_ci():
            pytest.fail(f"CI is set, so the terminal tests must run: {reason}", pytrace=False)
        pytest.skip(reason)
    socket = f"multids-test-{uuid.uuid4().hex[:8]}"

    def call(*args):
        return subprocess.run(
            ["tmux", "-L", socket, *args], capture_output=True, text=True, check=True
        ).stdout

    def start(command):
        call("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), command)
        call("set-option", "-g", "history-limit", "50000")

    def screen():
        return call("capture-pane", "-p")

    def history():
        return call("capture-pane", "-p", "-S", "-", "-E", "-")

    yield start, screen, history
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def shell(data_dir, *args):
    """The command line tmux runs: manage.py with args, then its exit code, then a pause."""
    env = {"MULTIDS_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "multids.settings"}
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    unset = " ".join(f"-u {k}" for k in os.environ if k.endswith("DATABASE_URL"))
    command = shlex.join([sys.executable, str(ROOT / "manage.py"), *args])
    return (
        f"cd {shlex.quote(str(ROOT))} && env {unset} {assignments} {command}; "
        f"echo '{DONE}' $?; sleep 600"
    )


def wait_for(screen_or_history, text, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = screen_or_history()
        if text in shown:
            return shown
        time.sleep(0.1)
    pytest.fail(f"{text!r} never appeared; the screen was:\n{screen_or_history()}")


def test_bars_redraw_in_place_and_the_summary_follows(tmux, migrated_dir):
    start, screen, history = tmux
    start(shell(migrated_dir, "insert_data", *LOAD))
    seen_bars = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        shown = screen()
        bars = [line for line in shown.splitlines() if BAR_LINE.match(line)]
        seen_bars = max(seen_bars, len(bars))
        # At every moment each table has one bar on the screen, never a scrolled copy.
        tables = [BAR_LINE.match(line).group(1) for line in bars]
        assert len(tables) == len(set(tables)), shown
        if DONE in shown:
            break
        time.sleep(0.1)
    assert seen_bars == 3, "the three bars were never on the screen together"
    everything = history()
    assert f"{DONE} 0" in everything, everything
    bar_lines = [line for line in everything.splitlines() if BAR_LINE.match(line)]
    # Redrawn in place: the whole scrollback holds exactly one line per table.
    assert [BAR_LINE.match(line).group(1) for line in bar_lines] == [
        "users",
        "products",
        "orders",
    ], everything
    assert all("rows/s" in line for line in bar_lines), bar_lines
    assert "20,000" in bar_lines[0] and "200,000" in bar_lines[2], bar_lines
    # The summary's title is one line, whole, even at 80 columns.
    title = "insert_data: synthetic (users=20000, products=2000, orders=200000, seed=0)"
    assert title in everything.splitlines(), everything
    assert "222,000 stored, 0 already present, 0 rejected" in everything
    assert "Writers at the same time: " in everything


def test_bars_show_totals_rate_and_eta_when_the_size_is_known(tmux, tmp_path):
    """Rows with a known total, and bytes read of a file's size, each with an ETA."""
    script = tmp_path / "bars.py"
    script.write_text(
        "import time\n"
        "import sys\nfrom crossdb.console import progress_for\n"
        # crossdb.loading.rows.Expected's shape (total, unit, position), without importing
        # crossdb.loading.rows
        "from collections import namedtuple\n"
        "Expected = namedtuple('Expected', 'total unit position', defaults=('rows', None))\n"
        "position = [0]\n"
        "with progress_for(sys.stdout, True) as progress:\n"
        "    progress.start('users', Expected(40_000, 'rows'))\n"
        "    progress.start('orders', Expected(8_000_000, 'bytes', lambda: position[0]))\n"
        "    progress.start('products')\n"
        "    for step in range(1, 31):\n"
        "        position[0] = step * 100_000\n"
        "        progress.advance('users', read=500, written=500)\n"
        "        progress.advance('orders', read=1000, written=1000)\n"
        "        progress.advance('products', read=10, written=10)\n"
        "        time.sleep(0.1)\n"
        "    print('=== shown')\n"
    )
    start, screen, _history = tmux
    env = f"env DJANGO_SETTINGS_MODULE=multids.settings PYTHONPATH={shlex.quote(str(ROOT))}"
    start(f"{env} {shlex.quote(sys.executable)} {shlex.quote(str(script))}; sleep 600")
    shown = wait_for(screen, "=== shown", timeout=60)
    lines = {m.group(1): line for line in shown.splitlines() if (m := BAR_LINE.match(line))}
    assert set(lines) == {"users", "orders", "products"}, shown
    assert "15,000/40,000 rows" in lines["users"], lines["users"]
    assert "rows/s" in lines["users"] and "ETA " in lines["users"], lines["users"]
    assert "3.0 MB/8.0 MB" in lines["orders"] and "30,000 rows" in lines["orders"], lines
    assert "ETA " in lines["orders"], lines["orders"]
    assert "300 rows" in lines["products"] and "ETA" not in lines["products"], lines
    assert all(len(line) <= WIDTH for line in shown.splitlines())


def test_no_bars_when_the_output_is_not_a_terminal(migrated_dir):
    done = manage("insert_data", *LOAD, data_dir=migrated_dir)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if BAR_LINE.match(line)], done.stdout
    assert "222,000 stored" in done.stdout


def bar_line(progress, table):
    """The bar of table as drawn, on a console wide enough for it on one line."""
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    task = next(t for t in progress.bars.tasks if t.description == table)
    Console(file=out, width=160).print(progress.bars.make_tasks_table([task]))
    return out.getvalue()


def rate_and_eta(line):
    rate = int(re.search(r"([\d,]+) rows/s", line).group(1).replace(",", ""))
    h, m, s = map(int, re.search(r"ETA (\d+):(\d\d):(\d\d)", line).groups())
    return rate, h * 3600 + m * 60 + s


@pytest.mark.parametrize("unit", ["rows", "bytes"])
def test_the_eta_is_what_is_left_at_the_rate_shown_beside_it(monkeypatch, unit):
    """orders are started with the others but read only once every user is (20 s here, on
    a clock the test moves): the rows/s shown and the ETA come from one measure, so the
    ETA is the rows (or bytes) left at that rate. The ETA was rich's, from the last
    moments' speed, and said 0:00:10 beside 30,481 rows/s with 900,000 rows left."""
    import sys
    from collections import namedtuple

    from crossdb import console

    clock = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    Expected = namedtuple("Expected", "total unit position", defaults=("rows", None))
    position = [0]
    if unit == "rows":
        expected = Expected(1_000_000, "rows")
    else:
        expected = Expected(50_000_000, "bytes", lambda: position[0])
    progress = console.RichProgress(sys.stdout)
    progress.start("orders", expected)
    clock[0] += 20  # the users are read first
    progress.advance("orders", read=50_000)
    for _ in range(2):
        clock[0] += 1.64
        position[0] += 2_500_000
        progress.advance("orders", read=50_000, written=50_000)
    rate, eta = rate_and_eta(bar_line(progress, "orders"))
    assert rate == round(100_000 / 3.28)
    if unit == "rows":
        assert eta == round(900_000 / (100_000 / 3.28))  # 900,000 rows left
    else:
        assert eta == round(45_000_000 / (5_000_000 / 3.28))  # 45 MB left at 1.5 MB/s
