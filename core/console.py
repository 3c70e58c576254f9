"""Terminal display for the commands: progress bars and the summary table (rich)."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from core.pipeline import NullProgress


class RichProgress:
    """Two bars per table: rows read and validated, rows written (stored, present, rejected)."""

    def __init__(self, file):
        self.bars = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(file=file),
            transient=False,
        )
        self.tasks = {}
        self.counts = {}

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        self.bars.stop()

    def start(self, table):
        for kind in ("read", "written"):
            self.tasks[table, kind] = self.bars.add_task(f"{table} {kind}", total=None, rate="")
            self.counts[table, kind] = 0

    def advance(self, table, read=0, written=0):
        for kind, n in (("read", read), ("written", written)):
            if n and (table, kind) in self.tasks:
                task_id = self.tasks[table, kind]
                self.bars.advance(task_id, n)
                task = self.bars.tasks[task_id]
                speed = task.speed or 0
                self.bars.update(task_id, rate=f"{speed:>10,.0f} rows/s")


def progress_for(stdout, enabled):
    """A live progress display on a terminal, otherwise one that shows nothing."""
    if enabled and stdout.isatty():
        return RichProgress(stdout)
    return _Quiet()


class _Quiet(NullProgress):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def summary_table(result):
    table = Table(title=f"insert_data: {result.source}", title_justify="left")
    for header in ("table", "stored", "already present", "rejected", "seconds"):
        table.add_column(header, justify="left" if header == "table" else "right")
    for row in result.summary_rows():
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in row))
    return table


def render(renderable, stdout, width=100):
    console = Console(file=stdout, width=width, force_terminal=False, no_color=True)
    console.print(renderable)
