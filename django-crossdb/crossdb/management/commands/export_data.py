"""``export_data DIR``: the command around ``crossdb.exporting`` (which is the manual)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)
from rich.filesize import decimal
from rich.table import Table

from crossdb import registry
from crossdb.console import progress_for, render
from crossdb.databases import NotReady, check_ready
from crossdb.exporting import (
    DEFAULT_CHUNK_SIZE,
    FORMATS,
    ExportError,
    ExportResult,
    check_directory,
    export,
)
from crossdb.rules import printable


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the examples laid out as written."""


def _epilog() -> str:
    names = ", ".join(f"{t}.csv" for t in registry.tables())
    return f"""\
examples:
  export_data backup/                  {names}
  export_data backup/ --format jsonl --gzip
  export_data backup/ --force          replace the files an earlier export left
  insert_data --from backup/           load them again, on any database

Only reads the databases. Files are written under temporary names in DIR and
renamed once every table is written: an error or Ctrl-C leaves DIR as it was.
exit status: 0 when every file was written; 1 after an error; 130 after Ctrl-C.
"""


class Command(BaseCommand):
    help = (
        "Write every registered table into DIR as the files insert_data --from DIR reads\n"
        "(TABLE.csv or TABLE.jsonl, optionally gzipped), streamed in bounded memory."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", _epilog())
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "directory",
            metavar="DIR",
            help="where to write the files (created if only it is missing)",
        )
        parser.add_argument(
            "--format",
            default="csv",
            metavar="FORMAT",
            help=f"{' or '.join(FORMATS)} (default csv)",
        )
        parser.add_argument("--gzip", action="store_true", help="write TABLE.csv.gz / .jsonl.gz")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace the tables' files already in DIR (and remove a table's file in "
            "another format, which the loader would refuse beside the new one)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_CHUNK_SIZE,
            metavar="N",
            help=f"rows read per round trip (default {DEFAULT_CHUNK_SIZE:,})",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="no progress bars (off anyway when piped)"
        )
        parser.add_argument(
            "--show",
            type=int,
            default=20,
            metavar="N",
            help="name at most N rows per table that would not load back as stored (default 20)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1 (got {options['batch_size']})")
        if options["show"] < 0:
            raise CommandError(f"--show must be 0 or more (got {options['show']})")
        if options["format"] not in FORMATS:
            raise CommandError(
                f"--format {printable(options['format'])}: choose {' or '.join(FORMATS)}"
            )
        try:  # the directory first: nothing is read for an export that cannot be written
            check_directory(
                options["directory"], options["format"], options["gzip"], options["force"]
            )
            check_ready(registry.specs()[t].alias for t in registry.tables())
        except (ExportError, NotReady) as exc:
            raise CommandError(printable(str(exc))) from exc
        progress = progress_for(self.stdout, not options["no_progress"])
        try:
            with progress:
                result = export(
                    options["directory"],
                    options["format"],
                    compress=options["gzip"],
                    force=options["force"],
                    chunk_size=options["batch_size"],
                    progress=progress,
                )
        except ExportError as exc:
            raise CommandError(printable(str(exc))) from exc
        except KeyboardInterrupt:
            raise CommandError(
                f"stopped by Ctrl-C: nothing was written to {printable(options['directory'])} "
                "(its files are as they were)",
                returncode=130,
            ) from None
        self.print_result(result, options["show"])

    def print_result(self, result: ExportResult, show: int) -> None:
        self.stdout.write(f"export_data: {printable(str(result.directory))}")
        table = Table()
        for header in ("table", "rows", "file", "size", "seconds"):
            table.add_column(header, justify="left" if header in ("table", "file") else "right")
        for done in result.tables.values():
            table.add_row(
                done.table,
                f"{done.rows:,}",
                printable(done.path.name),
                decimal(done.size),
                f"{done.seconds:.2f}",
            )
        render(table, self.stdout)
        self.stdout.write(
            f"{result.rows:,} rows written in {len(result.tables)} files in {result.seconds:.2f}s"
        )
        for path in result.removed:
            self.stdout.write(f"removed {printable(str(path))} (another file of the same table)")
        if result.misfit_count:
            self.stderr.write(
                f"warning: {result.misfit_count:,} stored row(s) would not load back as they "
                "are (written as stored; insert_data will reject or change them):"
            )
            for done in result.tables.values():
                for misfit in done.misfits[:show]:
                    self.stderr.write(f"  {printable(str(misfit))}")
                if done.misfit_count > min(show, len(done.misfits)):
                    self.stderr.write(
                        f"  ... and {done.misfit_count - min(show, len(done.misfits)):,} more "
                        f"in {done.table}"
                    )
