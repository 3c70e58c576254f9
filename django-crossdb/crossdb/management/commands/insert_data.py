import argparse
import atexit
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter
from django.db import DatabaseError, connections
from django.utils.module_loading import import_string

from crossdb import conf, registry, resume, runs, sources
from crossdb.console import (
    concurrency_line,
    encoding_hints,
    progress_for,
    render,
    summary_table,
    totals_line,
)
from crossdb.databases import NotReady, check_ready
from crossdb.loading import load
from crossdb.loading.indexes import repair_and_say as repair_indexes
from crossdb.loading.processes import first_line
from crossdb.loading.writers import ON_CONFLICT, REJECT
from crossdb.outputs import OutputError, OutputFile
from crossdb.registry import alias, fields
from crossdb.rules import printable

log = logging.getLogger(__name__)

DEFAULT_GENERATOR = "crossdb.sources.generated.generated"
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def _epilog():
    formats = "\n".join(f"  {t + '.csv':<14}{','.join(fields(t))}" for t in registry.tables())
    # Ten children for each parent, as a shop has ten orders for each customer.
    generate = " ".join(
        f"--{s.name} {10000 if s.references else 1000}" for s in registry.specs().values()
    )
    return f"""\
examples:
  insert_data                          load the default source ({_default_source_words()})
  insert_data --from DIR               load the files below from DIR
  insert_data {generate} --seed 7
  insert_data --from DIR --rejects rejects.csv --report run.json
  insert_data --from rejects.csv       feed the rejected rows back once fixed
  insert_data --from DIR --dry-run --rejects would-reject.csv
                                       every verdict, nothing written
  insert_data --from DIR --map {_map_example()}
                                       read a field from a column named otherwise
  insert_data --from DIR --on-conflict update
                                       write changed rows over the stored ones
  insert_data --from DIR --no-resume   after a stopped run, read every row again

file formats (in DIR, each optional; a header row names the columns, in any
order; extra columns are ignored):
{formats}
  *.jsonl       instead of .csv: one JSON object per line, same field names:
                {{"id": 1, "name": "Ann", "email": "ann@example.com"}}
  *.xlsx        an Excel workbook: the sheet named like the table, or its only
                sheet, with the same header (needs django-crossdb[excel])

exit status: 0 when the run completed, whatever was rejected; 1 when an error
stopped it; 130 after Ctrl-C; 143 after SIGTERM. Committed batches are kept:
run the same command again to finish. It resumes where the stopped run was, in
each file unchanged since (same size and modification time), and reports the
rows that run settled as its own; other files are compared with what is stored.
"""


def _map_example() -> str:
    """TABLE.FIELD=COLUMN for the first table's last field, whatever the project."""
    table = next(iter(registry.tables()), None)
    return f"{table}.{fields(table)[-1]}=COLUMN" if table else "TABLE.FIELD=COLUMN"


def _default_source_words():
    default = conf.get("DEFAULT_SOURCE")
    return f"{default}()" if default else "none: give --from"


def _exit_now(code):
    """End the process with code, after what ``sys.exit`` would run but the interpreter's
    teardown: connections closed, the functions registered with atexit (logging's flush
    among them), the output flushed."""
    connections.close_all()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the examples and file formats laid out as written."""


class Stopped(Exception):
    """SIGINT or SIGTERM reached the main process: stop cleanly and say what was kept."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """Turn the first SIGINT or SIGTERM into Stopped; ignore any later one during cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (call_command in a thread)
        return

    def stop(signum, _frame):
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def _input_paths(source):
    """The files source reads (``source.input_paths()``, or what older sources expose)."""
    input_paths = getattr(source, "input_paths", None)
    if input_paths is not None:
        return list(input_paths())
    # Until every source has input_paths(): a directory source's files, a rejects file.
    files = getattr(source, "files", None)
    paths = list(files().values()) if files is not None else []
    return [*paths, source.path] if getattr(source, "path", None) else paths


class Command(BaseCommand):
    help = (
        "Validate rows and store them concurrently, each table in its own database.\n"
        "Every row is stored, recognised as already present, or rejected with a reason;\n"
        "a row that names rows of other tables is committed only after them."
    )

    stopped = False  # set when a signal stopped the run
    resume_point = None  # set by prepare(): the stopped run this one resumes (crossdb.resume)
    resume_identity = None  # and what a run resuming this one must share with it

    def run_from_argv(self, argv):
        """Run as Django does, then end the process at once, skipping the interpreter's teardown.

        When the command has returned (or a signal stopped it) the writers are gone, the
        files are written and closed, and the output is flushed here; unloading Django,
        psycopg, numpy and the load's objects would only make the person wait: 0.35 s after
        the 1.11M-row bench load (measured), about a second after Ctrl-C on a busy machine.
        An error exits as Django makes it.
        """
        try:
            super().run_from_argv(argv)
        except SystemExit as exc:
            if not self.stopped:
                raise
            _exit_now(exc.code if isinstance(exc.code, int) else 1)
        _exit_now(0)

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", _epilog())
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        src = parser.add_argument_group(f"input (default: {_default_source_words()})")
        src.add_argument(
            "--from",
            dest="source",
            metavar="PATH",
            help=f"a directory with {'/'.join(registry.tables())} .csv, .jsonl or .xlsx files, "
            "or a rejects CSV (from --rejects) after fixing it",
        )
        src.add_argument(
            "--encoding",
            metavar="CODEC",
            help="the encoding of the --from files (default UTF-8; any codec Python knows, "
            "e.g. latin-1, cp1252, utf-16)",
        )
        src.add_argument(
            "--map",
            action="append",
            default=[],
            metavar="TABLE.FIELD=COLUMN",
            help="read FIELD of TABLE's file from the column (or JSONL key) COLUMN; repeat "
            "for each; nothing after = leaves a field with a default out",
        )
        src.add_argument(
            "--map-file",
            metavar="FILE",
            help="the same, one TABLE.FIELD=COLUMN per line (# comments); --map overrides it",
        )
        for table in registry.tables():
            src.add_argument(
                f"--{table}", type=int, default=0, metavar="N", help=f"generate N {table}"
            )
        src.add_argument(
            "--seed", type=int, default=0, metavar="S", help="seed for generated data (default 0)"
        )
        loading = parser.add_argument_group("loading")
        loading.add_argument(
            "--dry-run",
            action="store_true",
            help="decide every row as the run would (rules, references, keys, stored rows) "
            "and write nothing to any database; --rejects and --report are still written",
        )
        loading.add_argument(
            "--batch-size",
            type=int,
            default=load.DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"rows per transaction (default {load.DEFAULT_BATCH_SIZE:,})",
        )
        loading.add_argument(
            "--on-conflict",
            choices=ON_CONFLICT,
            default=REJECT,
            help="a row whose id is stored with other data: reject it as a conflict "
            "(default); update: store its values over the stored row (every rule, the "
            "unique keys and the references still checked; counted as updated; an id given "
            "twice in the input is updated in input order, the later row winning); skip: "
            "keep the stored row (counted as skipped, not rejected)",
        )
        loading.add_argument(
            "--no-resume",
            action="store_true",
            help="read every row even where the last run of the same files stopped part-way "
            "(by default the rows it committed are not read again)",
        )
        out = parser.add_argument_group("output")
        out.add_argument("--rejects", metavar="FILE", help="write every rejected row to FILE (CSV)")
        out.add_argument("--report", metavar="FILE", help="write a JSON summary of the run to FILE")
        out.add_argument(
            "--no-progress", action="store_true", help="no progress bars (off anyway when piped)"
        )
        out.add_argument(
            "--show",
            type=int,
            default=50,
            metavar="N",
            help="print at most N rejections (default 50; all are in --rejects)",
        )

    def handle(self, *args, **options):
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1 (got {options['batch_size']})")
        progress = progress_for(self.stdout, not options["no_progress"])
        with stop_on_signals():
            run = checkpoints = None
            try:
                source, outputs = self.prepare(options)
                point, wanted = self.resume_point, self.resume_identity
                if wanted is not None and not options["dry_run"]:
                    run, checkpoints = self.begin(source, wanted, point)
                with progress:
                    result = load.load(
                        source,
                        batch_size=options["batch_size"],
                        progress=progress,
                        dry_run=options["dry_run"],
                        on_conflict=options["on_conflict"],
                        resume=point,
                        checkpoints=checkpoints,
                    )
                self.print_result(result, options["show"])
                if not options["encoding"]:
                    for hint in encoding_hints(result):
                        self.stderr.write(f"warning: {hint}")
                self.save(result, outputs)
                if not result.dry_run:  # a dry run leaves the run log as it is, too
                    self.record(result, run)
                getattr(source, "check_unchanged", lambda: None)()  # a file still being written
            except (load.LoadError, sources.SourceError) as exc:
                # a database that failed, or a file that broke off mid-way (a damaged .gz)
                self.keep_for_resume(run, checkpoints, first_line(exc))
                kept = (
                    "Nothing was written (a dry run)."
                    if options["dry_run"]
                    else "Batches committed before the failure are kept; "
                    "run the same command again to finish."
                )
                raise CommandError(f"{printable(str(exc))}. {kept}") from exc
            except (Stopped, KeyboardInterrupt) as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                self.stopped = True
                message = self.stopped_message(signum, progress, options["dry_run"])
                self.keep_for_resume(run, checkpoints, message)
                raise CommandError(message, returncode=128 + signum) from None

    def prepare(self, options):
        """Build the source and check everything that must stop the run before it starts:
        the output files first, so that nothing is read for a run that cannot finish.
        Return (source, outputs); ``resume_point`` is then the point it resumes from, or
        None, and ``resume_identity`` what a run resuming it must share (None: never)."""
        point = None
        try:
            source = self.source_from(options)
            outputs = self.outputs(source, options)
            source.check()
            check_ready(["default", *(alias(t) for t in registry.tables())])
            wanted = resume.identity(source, options)
            if not options["dry_run"]:  # a dry run writes nothing, not even a repair
                if not options.get("no_resume"):
                    point = resume.point_for(source.label, wanted)
                # what a stopped load left unbuilt on the tables this one writes, their
                # writers build at the end, after the rows (crossdb.loading.writers)
                repair_indexes(self.stdout, leave=source.tables())
        except (sources.SourceError, NotReady, OutputError) as exc:
            raise CommandError(printable(str(exc))) from exc
        except DatabaseError as exc:
            raise CommandError(f"cannot read the run log in default: {first_line(exc)}") from exc
        for warning in getattr(source, "warnings", list)():
            self.stderr.write(f"warning: {printable(warning)}")
        self.resume_point, self.resume_identity = point, wanted
        return source, outputs

    def begin(self, source, wanted, point):
        """Record the run as running, with the prefixes it settles as it goes, so a run
        after it can resume it (``crossdb.resume``)."""
        try:
            run = runs.begin(source.label)
        except DatabaseError as exc:
            raise CommandError(f"cannot record the run in default: {first_line(exc)}") from exc
        if point is not None:
            self.stdout.write(
                f"Resuming run #{point.run_id}, which stopped part-way: {point.describe()} "
                "settled by it and not read again (--no-resume reads every row)."
            )
        return run, resume.Checkpoints(run.pk, wanted, point)

    @staticmethod
    def keep_for_resume(run, checkpoints, message):
        """Close a stopped run's record as failed, with the prefixes it settled."""
        if run is None:
            return
        try:
            checkpoints.save()
            runs.fail(run.pk, message)
        except DatabaseError as exc:  # the load's own message says what stopped it
            log.warning("the run's record was not closed: %s", first_line(exc))

    def outputs(self, source, options):
        """{option: crossdb.outputs.OutputFile} for --rejects and --report, each checked."""
        self.refuse_overwriting_input(source, options)
        outputs = {}
        for option in ("rejects", "report"):
            if options[option]:
                outputs[option] = OutputFile(f"--{option}", options[option])
                outputs[option].check()
        return outputs

    def source_from(self, options):
        counts = {t: options[t] for t in registry.tables()}
        generated = any(counts.values())
        if options["source"] and generated:
            flags = "/".join(f"--{t}" for t in registry.tables())
            raise CommandError(f"use either --from or {flags}, not both")
        if options["encoding"] and not options["source"]:
            raise CommandError("--encoding is for files read with --from")
        if (options.get("map") or options.get("map_file")) and not options["source"]:
            raise CommandError("--map and --map-file are for files read with --from")
        if options["source"]:
            mapping = sources.ColumnMap.from_options(
                options.get("map") or (), options.get("map_file")
            )
            return sources.source_for_path(options["source"], options["encoding"], mapping)
        if generated or any(n < 0 for n in counts.values()):
            return import_string(conf.get("GENERATOR") or DEFAULT_GENERATOR)(
                counts, options["seed"]
            )
        default = conf.get("DEFAULT_SOURCE")
        if default is None:
            raise CommandError(
                "give the files to load: insert_data --from DIR (CROSSDB['DEFAULT_SOURCE'] "
                "names no default source)"
            )
        return import_string(default)()

    def refuse_overwriting_input(self, source, options):
        """Refuse --rejects/--report naming an input file (or each other) before loading."""
        inputs = _input_paths(source)
        for option in ("rejects", "report"):
            target = options[option]
            if target and any(_same_file(target, path) for path in inputs):
                raise CommandError(
                    f"--{option} {target} is one of the input files; "
                    "writing it would overwrite the input. Choose another file name."
                )
        if options["rejects"] and options["report"]:
            if _same_file(options["rejects"], options["report"]):
                raise CommandError(
                    f"--rejects and --report both name {options['report']}; give two files"
                )

    @staticmethod
    def stopped_message(signum, progress, dry_run=False):
        stopper = STOP_SIGNALS.get(signum, f"signal {signum}")
        if dry_run:
            return f"stopped by {stopper}: a dry run, nothing was written."
        done = progress.written_so_far()
        kept = ", ".join(f"{t} {done[t]:,}" for t in registry.tables() if t in done)
        kept = f"so far {kept} rows handled" if kept else "no batch was committed yet"
        return (
            f"stopped by {stopper}: committed batches "
            f"are kept ({kept}); run the same command again to finish."
        )

    @staticmethod
    def save(result, outputs):
        """Write --rejects and --report (checked before the load, and opened so that
        nothing waits: ``crossdb.outputs.OutputFile``)."""
        for option, write in (("rejects", result.write_rejects), ("report", result.write_json)):
            if option not in outputs:
                continue
            try:
                write(outputs[option])
            except OutputError as exc:
                raise CommandError(printable(str(exc))) from exc
            except OSError as exc:  # a disk full, a reader gone
                raise CommandError(f"cannot write {outputs[option]}: {exc.strerror}") from exc

    @staticmethod
    def record(result, run=None):
        """Log the run for the overview page, after everything else is out."""
        try:
            if run is None:
                runs.record(result)
            else:
                runs.finish(run.pk, result)
        except DatabaseError as exc:  # every row is committed; only the run's log is missing
            raise CommandError(
                f"the load is complete, but it could not be logged in the default database "
                f"({first_line(exc)}); the overview page will not list it"
            ) from exc

    def print_result(self, result, show):
        title = "insert_data --dry-run (nothing written)" if result.dry_run else "insert_data"
        self.stdout.write(f"{title}: {printable(result.source)}")
        render(summary_table(result), self.stdout)
        self.stdout.write(totals_line(result))
        self.stdout.write(concurrency_line(result))
        rejected = len(result.rejections)
        if rejected:
            self.stdout.write("\nRejected rows:")
            for rejection in itertools.islice(result.rejections.sorted(), show):
                self.stdout.write(f"  {printable(str(rejection))}")
            if rejected > show:
                self.stdout.write(f"  ... and {rejected - show:,} more (use --rejects FILE)")
