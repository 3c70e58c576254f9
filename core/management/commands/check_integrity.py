import json

from django.core.management.base import BaseCommand, CommandError

from core import integrity
from core.databases import NotReady, check_ready
from core.indexes import repair_and_say as repair_indexes
from core.tables import SPECS


class Command(BaseCommand):
    help = (
        "Check that every cross-database reference (each order's user and product) names a "
        "stored row (streaming the children in batches, so any size fits in memory) and run "
        "PRAGMA integrity_check "
        "on every SQLite file. Prints a summary and the first orphans. Exit 0 when everything "
        "holds, 1 otherwise. Example: python manage.py check_integrity --json report.json"
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=integrity.DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"rows read per query (default {integrity.DEFAULT_BATCH_SIZE:,})",
        )
        parser.add_argument(
            "--show",
            type=int,
            default=20,
            metavar="N",
            help="print at most N orphans (default 20)",
        )
        parser.add_argument(
            "--json",
            metavar="FILE",
            help=f"write the full report to FILE (lists up to {integrity.DEFAULT_KEEP:,} "
            "orphans, or --show if larger; the count covers all)",
        )

    def handle(self, *args, **options):
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1 (got {options['batch_size']})")
        if options["show"] < 0:
            raise CommandError(f"--show must be 0 or more (got {options['show']})")
        try:
            check_ready([s.alias for s in SPECS.values()])
            repair_indexes(self.stdout)
        except NotReady as exc:
            raise CommandError(str(exc)) from exc
        result = integrity.check_integrity(
            batch_size=options["batch_size"],
            keep=max(options["show"], integrity.DEFAULT_KEEP),
        )
        if options["json"]:
            try:
                with open(options["json"], "w", encoding="utf-8") as handle:
                    json.dump(result.as_dict(), handle, indent=2)
            except OSError as exc:
                raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from exc
        self.print_result(result, options["show"])
        if not result.ok:
            raise CommandError(
                f"integrity check failed: {result.orphan_count:,} orphaned row(s), "
                f"{len(result.corrupt)} damaged database(s)"
                + ("; the scan did not finish" if result.scan_error else "")
            )

    def print_result(self, result, show):
        for name, status in result.databases.items():
            self.stdout.write(f"{name:<12} {status}")
        checked = ", ".join(f"{n:,} {table}" for table, n in result.rows_checked.items())
        self.stdout.write(f"{checked or 'nothing'} checked, {result.orphan_count:,} orphaned")
        if result.scan_error:
            self.stdout.write(f"orders scan {result.scan_error}")
        for orphan in result.orphans[:show]:
            self.stdout.write(f"  {orphan}")
        if result.orphan_count > show:
            self.stdout.write(f"  ... and {result.orphan_count - show:,} more (use --json FILE)")
        if result.ok:
            self.stdout.write(self.style.SUCCESS("Integrity holds."))
