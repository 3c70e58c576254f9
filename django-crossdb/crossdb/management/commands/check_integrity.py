import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from crossdb import integrity, registry
from crossdb.databases import NotReady, check_ready
from crossdb.guard import GuardTimeout
from crossdb.loading import indexes


class Command(BaseCommand):
    help = (
        "Check that every cross-database reference (each child row's parents) names a "
        "stored row (streaming the children in batches, so any size fits in memory), that "
        "every comparison key is the key of its source and unique, and run "
        "PRAGMA integrity_check on every SQLite file. Only reads (see --repair). Prints a "
        "summary and the first problems. Exit 0 when everything holds, 1 otherwise. "
        "Example: python manage.py check_integrity --json report.json"
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
        parser.add_argument(
            "--replica",
            action="store_true",
            help="read from the read replicas (CROSSDB['REPLICAS']) where they have replayed "
            "what the rows read depend on; a suspected orphan is confirmed on the primaries",
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="first build the indexes a stopped load left missing (migrate_all does too)",
        )

    def handle(self, *args, **options):
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1 (got {options['batch_size']})")
        if options["show"] < 0:
            raise CommandError(f"--show must be 0 or more (got {options['show']})")
        try:
            check_ready([s.alias for s in registry.specs().values()])
        except NotReady as exc:
            raise CommandError(self.not_ready(exc)) from exc
        try:
            self.indexes(options["repair"])
            result = integrity.check_integrity(
                batch_size=options["batch_size"],
                keep=max(options["show"], integrity.DEFAULT_KEEP),
                replica=options["replica"],
            )
        except GuardTimeout as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            try:
                with open(options["json"], "w", encoding="utf-8") as handle:
                    # default=str: a key may be a UUID (or any other non-JSON type)
                    json.dump(result.as_dict(), handle, indent=2, default=str)
            except OSError as exc:
                raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from exc
        self.print_result(result, options["show"])
        if not result.ok:
            problems = [
                f"{result.orphan_count:,} orphaned row(s)",
                f"{len(result.corrupt)} damaged database(s)",
            ]
            if result.stale_key_count or result.shared_keys:
                problems.append(
                    f"{result.stale_key_count:,} stale key(s), {len(result.shared_keys):,} "
                    "shared key(s)"
                )
            raise CommandError(
                f"integrity check failed: {', '.join(problems)}"
                + ("; the scan did not finish" if result.scan_error else "")
            )

    def not_ready(self, exc):
        """NotReady's message, and what the databases that can be read say about it: a
        parent database recreated empty would orphan every child that names it."""
        lines = [str(exc)]
        try:
            unbacked = integrity.unbacked_references()
        except DatabaseError:
            unbacked = []
        lines.extend(f"  {u}" for u in unbacked)
        if unbacked:
            lines.append("  (migrate_all would create the missing tables empty)")
        return "\n".join(lines)

    def indexes(self, repair):
        """Build (--repair) or mention the indexes a stopped load left missing; a load still
        running has them missing too, so without --repair nothing is written."""
        if repair:
            indexes.repair_and_say(self.stdout)
            return
        for alias, model in indexes.routed_models():
            lacking = indexes.missing(alias, model)
            if lacking:
                self.stdout.write(
                    f"{alias}: {model._meta.db_table} lacks {', '.join(i.name for i in lacking)} "
                    "(a load is running, or one stopped: migrate_all or --repair builds it)"
                )

    def print_result(self, result, show):
        for name, status in result.databases.items():
            self.stdout.write(f"{name:<12} {status}")
        checked = ", ".join(f"{n:,} {table}" for table, n in result.rows_checked.items())
        self.stdout.write(f"{checked or 'nothing'} checked, {result.orphan_count:,} orphaned")
        if result.scan_error:
            self.stdout.write(f"the scan of {result.scan_error}")
        for orphan in result.orphans[:show]:
            self.stdout.write(f"  {orphan}")
        if result.orphan_count > show:
            self.stdout.write(f"  ... and {result.orphan_count - show:,} more (use --json FILE)")
        if result.stale_key_count:
            self.stdout.write(f"{result.stale_key_count:,} stale key(s):")
            for stale in result.stale_keys[:show]:
                self.stdout.write(f"  {stale}")
        for shared in result.shared_keys[:show]:
            self.stdout.write(f"  {shared}")
        if result.ok:
            self.stdout.write(self.style.SUCCESS("Integrity holds."))
