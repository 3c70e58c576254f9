"""Terminal display for the commands: progress bars and the summary (rich).

Progress goes to the real stream, not through Django's ``OutputWrapper``: the wrapper ends
every write with a newline, which turns rich's in-place redraw into one new line per
refresh. Bars are drawn only when that stream is a terminal.
"""

import time

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class _Counts:
    """Rows with a verdict per table, kept even when nothing is drawn (for the stop message)."""

    def __init__(self):
        self.written = {}
        self.expected = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def start(self, table, expected=None):
        """Begin table; expected is a ``crossdb.loading.rows.Expected`` or None when the size is
        unknown."""
        self.written.setdefault(table, 0)
        self.expected[table] = expected

    def advance(self, table, read=0, written=0):
        self.written[table] = self.written.get(table, 0) + written

    def written_so_far(self):
        """Rows whose batch a writer reported committed (or that were rejected), per table."""
        return {t: n for t, n in self.written.items() if n}


class _Remaining(ProgressColumn):
    """ "ETA 0:01:05" when the total is known and a rate has been measured, else nothing.

    The seconds are the bar's own (``RichProgress._refresh``), from the very rate the bar
    shows, not rich's estimate from the last seconds' speed: the two disagreed (30,481
    rows/s beside ETA 0:00:10 with 900,000 rows left).
    """

    def render(self, task):
        remaining = task.fields.get("eta")
        if remaining is None or task.finished:
            return Text("")
        minutes, seconds = divmod(round(remaining), 60)
        return Text(f"ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}", style="cyan")


def seconds_left(total, done, per_second):
    """How long the rest of total takes at per_second, or None when that cannot be told."""
    if total is None or done is None or not per_second or done >= total:
        return None
    return (total - done) / per_second


class RichProgress(_Counts):
    """One bar per table: how far it is (rows with a verdict, or bytes read), rows/s, ETA."""

    def __init__(self, file):
        super().__init__()
        self.bars = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[rate]}"),
            _Remaining(),
            TimeElapsedColumn(),
            console=Console(file=file),
            transient=False,
        )
        self.tasks = {}
        self.began = {}
        self.per_second = {}  # table -> (rows/s shown, over how many seconds)

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        for table in self.tasks:
            self._refresh(table)
        self.bars.stop()

    def start(self, table, expected=None):
        super().start(table, expected)
        total = expected.total if expected is not None else None
        self.tasks[table] = self.bars.add_task(table, total=total, done="", rate="", eta=None)
        self.began[table] = None  # when its first rows were read: its clock starts there
        self.per_second[table] = None
        self._refresh(table)

    def advance(self, table, read=0, written=0):
        super().advance(table, read, written)
        if table not in self.tasks:
            return
        now = time.monotonic()
        if self.began.get(table) is None and (read or written):
            self.began[table] = now  # not at start(): orders wait for every user first
        if written:  # measured up to the last batch: a finished table keeps its rate
            elapsed = max(now - self.began[table], 1e-6)
            self.per_second[table] = (self.written[table] / elapsed, elapsed)
            rate = self.per_second[table][0]
            self.bars.update(self.tasks[table], rate=f"{rate:>9,.0f} rows/s")
        self._refresh(table)

    def _refresh(self, table):
        expected, written = self.expected.get(table), self.written.get(table, 0)
        rate, elapsed = self.per_second.get(table) or (None, None)
        if expected is not None and expected.position is not None:
            completed = expected.position()
            done = f"{_amount(completed, expected)}/{_amount(expected.total, expected)}"
            done += f"  {written:,} rows"
            # bytes read per second over the same span as the rows/s shown beside it
            eta = seconds_left(expected.total, completed, elapsed and completed / elapsed)
        else:
            completed = written
            total = f"/{expected.total:,}" if expected and expected.total is not None else ""
            done = f"{written:,}{total} rows"
            eta = seconds_left(expected.total if expected else None, written, rate)
        self.bars.update(self.tasks[table], completed=completed, done=done, eta=eta)


def _amount(value, expected):
    if value is None:
        return "?"
    return decimal(value) if expected.unit == "bytes" else f"{value:,}"


def progress_for(stdout, enabled):
    """Bars on the terminal behind stdout (a Django OutputWrapper or a stream), else none."""
    stream = getattr(stdout, "_out", stdout)
    isatty = getattr(stream, "isatty", None)
    if enabled and isatty is not None and isatty():
        return RichProgress(stream)
    return _Counts()


def summary_table(result):
    """The per-table counts; the title is printed on its own line (see summary_lines)."""
    table = Table()
    for header in result.summary_columns():
        table.add_column(header, justify="left" if header == "table" else "right")
    for row in result.summary_rows():
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in row))
    return table


def concurrency_line(result):
    """Say, on every run, whether the writers were busy at the same moment, and why not."""
    wrote = [t.table for t in result.tables.values() if t.started and t.finished]
    overlaps = result.overlaps()
    if result.dry_run:
        return "Writers at the same time: none (a dry run writes nothing)"
    if len(wrote) < 2:
        return "Writers at the same time: none (one database or none written)"
    if overlaps:
        return f"Writers at the same time: {', '.join(overlaps)}"
    return "Writers at the same time: none (each finished before the next began)"


def encoding_hints(result):
    """One line per table most of whose rows were rejected for bytes that are not UTF-8:
    the file is most likely in another encoding, which --encoding names (each row alone
    says only that it is not UTF-8). Such bytes are read as the surrogates U+DC80-U+DCFF
    (surrogateescape); a lone surrogate written as a JSON escape is no sign of it."""
    hints = []
    for table in result.tables.values():
        bad = table.undecoded  # counted as they were rejected (``LoadResult.reject``)
        if bad and bad * 2 > table.read:
            hints.append(
                f"most {table.table} rows ({bad:,} of {table.read:,}) are not valid UTF-8: "
                "if the file is in another encoding, give it, e.g. --encoding latin-1 "
                "(or cp1252, utf-16)"
            )
    return hints


def totals_line(result):
    """The totals, "24 stored, 0 already present, 6 rejected in 0.08s", with "2 updated"
    after stored or "3 skipped" after already present when the run counts them apart."""
    totals = result.totals()
    apart = result.counted_apart
    would = "would be " if result.dry_run else ""
    updated = f"{totals['updated']:,} {would}updated, " if "updated" in apart else ""
    skipped = f"{totals['skipped']:,} skipped, " if "skipped" in apart else ""
    line = (
        f"{totals['stored']:,} {would}stored, {updated}{totals['present']:,} already present, "
        f"{skipped}{totals['rejected']:,} rejected in {result.seconds:.2f}s"
    )
    return f"{line} (dry run: nothing was written)" if result.dry_run else line


def render(renderable, stdout, width=100):
    console = Console(file=stdout, width=width, force_terminal=False, no_color=True)
    console.print(renderable)
