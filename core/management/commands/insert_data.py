from django.core.management.base import BaseCommand, CommandError

from core import pipeline, report, sources
from core.console import progress_for, render, summary_table
from core.databases import NotReady, check_ready
from core.tables import TABLES, alias


class Command(BaseCommand):
    help = (
        "Validate rows and store them concurrently in users_db, products_db and orders_db. "
        "With no options, load the built-in demo data. Every row is stored, recognised as "
        "already present, or rejected with a reason; orders are committed only after the "
        "users and products they name. Exit 0 when the run completes, whatever was rejected."
    )

    def add_arguments(self, parser):
        src = parser.add_argument_group("input (default: the built-in demo data)")
        src.add_argument(
            "--from",
            dest="source",
            metavar="PATH",
            help="a directory with users/products/orders .csv or .jsonl files, "
            "or a rejects CSV (from --rejects) after fixing it",
        )
        src.add_argument("--users", type=int, default=0, metavar="N", help="generate N users")
        src.add_argument("--products", type=int, default=0, metavar="N", help="generate N products")
        src.add_argument("--orders", type=int, default=0, metavar="N", help="generate N orders")
        src.add_argument(
            "--seed", type=int, default=0, metavar="S", help="seed for generated data (default 0)"
        )
        out = parser.add_argument_group("output")
        out.add_argument(
            "--batch-size",
            type=int,
            default=pipeline.DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"rows per transaction (default {pipeline.DEFAULT_BATCH_SIZE:,})",
        )
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
        try:
            source = self.source_from(options)
            source.check()
            check_ready(["default", *(alias(t) for t in TABLES)])
        except (sources.SourceError, NotReady) as exc:
            raise CommandError(str(exc)) from exc
        with progress_for(self.stdout, not options["no_progress"]) as progress:
            try:
                result = pipeline.load(source, batch_size=options["batch_size"], progress=progress)
            except pipeline.LoadError as exc:
                raise CommandError(
                    f"{exc}. Batches committed before the failure are kept; "
                    "run the same command again to finish."
                ) from exc
            except KeyboardInterrupt:
                raise CommandError(
                    "interrupted. Committed batches are kept; run the same command again to finish."
                ) from None
        self.save(result, options)
        self.print_result(result, options["show"])

    def source_from(self, options):
        generated = any(options[k] for k in ("users", "products", "orders"))
        if options["source"] and generated:
            raise CommandError("use either --from or --users/--products/--orders, not both")
        if options["source"]:
            return sources.source_for_path(options["source"])
        if generated or any(options[k] < 0 for k in ("users", "products", "orders")):
            return sources.SyntheticSource(
                options["users"], options["products"], options["orders"], options["seed"]
            )
        return sources.demo_source()

    def save(self, result, options):
        try:
            if options["rejects"]:
                result.write_rejects(options["rejects"])
            if options["report"]:
                result.write_json(options["report"])
        except OSError as exc:
            raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from exc
        report.record(result)

    def print_result(self, result, show):
        render(summary_table(result), self.stdout)
        totals = result.totals()
        self.stdout.write(
            f"{totals['stored']:,} stored, {totals['present']:,} already present, "
            f"{totals['rejected']:,} rejected in {result.seconds:.2f}s"
            + (
                f"; writers busy at the same time: {', '.join(result.overlaps())}"
                if result.overlaps()
                else ""
            )
        )
        rejections = result.sorted_rejections()
        if rejections:
            self.stdout.write("\nRejected rows:")
            for rejection in rejections[:show]:
                self.stdout.write(f"  {rejection}")
            if len(rejections) > show:
                self.stdout.write(f"  ... and {len(rejections) - show:,} more (use --rejects FILE)")
