from django.core.management.base import BaseCommand, CommandError

from crossdb import deletion, registry, rules
from crossdb.databases import NotReady, check_ready
from crossdb.guard import CommitOrderError, GuardTimeout


def _parents():
    return [s.name for s in registry.specs().values() if s.children]


class Command(BaseCommand):
    help = (
        "Delete one row that rows of other tables name, without orphaning them. Refused while "
        "a protecting reference has children, unless --with-children: then the children are "
        "deleted and committed first, then the row. Example: python manage.py delete_row "
        "TABLE KEY --with-children"
    )

    def add_arguments(self, parser):
        parser.add_argument("table", help=f"the table: {' or '.join(_parents())}")
        parser.add_argument("id", metavar="key", help="the primary key of the row to delete")
        parser.add_argument(
            "--with-children",
            dest="with_children",
            action="store_true",
            help="delete the row's children first instead of refusing",
        )

    def handle(self, *args, **options):
        table = options["table"]
        if table not in registry.specs() or not registry.specs()[table].children:
            raise CommandError(self.not_a_parent(table))
        key = registry.specs()[table].model._meta.pk
        try:
            pk = rules.key_rule(key.attname, key)(options["id"])
        except rules.Invalid as exc:
            raise CommandError(f"{table}: {exc}") from exc
        try:
            check_ready([s.alias for s in registry.specs().values()])
            result = deletion.delete(table, [pk], with_children=options["with_children"])
        except deletion.HasChildren as exc:
            raise CommandError(
                f"{exc} (python manage.py delete_row {table} {pk} --with-children)"
            ) from exc
        except (NotReady, CommitOrderError, GuardTimeout) as exc:
            raise CommandError(str(exc)) from exc
        noun = registry.specs()[table].noun
        for child, count in result.children.items():
            if count:
                self.stdout.write(f"deleted {count:,} {child} of {noun} {pk}")
        if not result.parents:
            raise CommandError(f"{noun} {pk} does not exist")
        self.stdout.write(self.style.SUCCESS(f"deleted {noun} {pk}"))

    def not_a_parent(self, table):
        choices = " or ".join(_parents())
        if table in registry.specs():
            owners = " or ".join(
                registry.specs()[r.parent].noun for r in registry.specs()[table].references
            )
            return (
                f"{table} are deleted with the {owners} they belong to "
                f"(python manage.py delete_row {_parents()[0]} ID --with-children) "
                "or one by one in the admin; delete_row takes " + choices
            )
        return f"unknown table {table!r}; delete_row takes {choices}"
