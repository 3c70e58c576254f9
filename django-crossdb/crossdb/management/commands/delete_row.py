from django.core.management.base import BaseCommand, CommandError

from crossdb import deletion, registry
from crossdb.databases import NotReady, check_ready


def _parents():
    return [s.name for s in registry.specs().values() if s.children]


class Command(BaseCommand):
    help = (
        "Delete one row that other tables refer to (a user or a product) without orphaning "
        "its children. Refused while a protecting reference has children, unless "
        "--with-children (alias --with-orders): then the children are deleted and committed "
        "first, then the row. Example: python manage.py delete_row users 3 --with-orders"
    )

    def add_arguments(self, parser):
        parser.add_argument("table", help=f"the table: {' or '.join(_parents())}")
        parser.add_argument("id", type=int, help="the id of the row to delete")
        parser.add_argument(
            "--with-children",
            "--with-orders",
            dest="with_children",
            action="store_true",
            help="delete the row's children (its orders) first instead of refusing",
        )

    def handle(self, *args, **options):
        table, pk = options["table"], options["id"]
        if table not in registry.specs() or not registry.specs()[table].children:
            raise CommandError(self.not_a_parent(table))
        try:
            check_ready([s.alias for s in registry.specs().values()])
            result = deletion.delete(table, [pk], with_children=options["with_children"])
        except (NotReady, deletion.HasChildren) as exc:
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
