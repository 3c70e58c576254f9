"""``flush`` that keeps cross-database references true.

Django's ``flush --database users_db`` empties the users and leaves every order that names
them in ``orders_db`` pointing at nothing. Here a flush of a database holding parent tables
runs in the guard's commit order (``crossdb.deletion.flush_parents``): the children stored in
other databases are counted under the exclusive guard, and the flush is refused while any
exist, naming them, unless ``--with-children`` deletes them first (committed before the
flush, as a delete would). Flushing the children's databases first needs no flag.
"""

from django.core.management.base import CommandError
from django.core.management.commands import flush
from django.db import DatabaseError, connections

from crossdb import deletion
from crossdb.guard import CommitOrderError, GuardTimeout


class Command(flush.Command):
    help = (
        "Remove every row from one database, as Django's flush does, without orphaning rows "
        "of other databases that name its rows: refused while such children exist, unless "
        "--with-children deletes them first. Flush the children's databases first, then "
        "their parents'. Example: python manage.py flush --database ALIAS --no-input"
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--with-children",
            action="store_true",
            help="also delete the rows of other databases that name this database's rows "
            "(the children of the rows flushed), committed before the flush",
        )

    def handle(self, **options):
        database = options["database"]
        try:
            counts = deletion.children_elsewhere(database)
        except DatabaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(
                f"cannot count the rows of other databases that name rows of {database} "
                f"({first}); run python manage.py migrate_all first"
            ) from exc
        if counts and not options["with_children"]:
            raise CommandError(f"{deletion._children_words(database, counts)}; {how(database)}")
        if options["interactive"] and not self.confirmed(database, counts):
            self.stdout.write("Flush cancelled.")
            return
        quiet = {**options, "interactive": False}
        try:
            deleted = deletion.flush_parents(
                database,
                lambda: super(Command, self).handle(**quiet),
                with_children=options["with_children"],
            )
        except deletion.ChildrenElsewhere as exc:  # children added since they were counted
            raise CommandError(f"{exc}; {how(database)}") from exc
        except (CommitOrderError, GuardTimeout) as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"]:
            for child, n in deleted.items():
                self.stdout.write(f"deleted {n:,} {child} that named rows of {database}")

    def confirmed(self, database, counts):
        name = connections[database].settings_dict["NAME"]
        also = f"\nand the {deletion.children_phrase(counts)} that name them" if counts else ""
        answer = input(
            "You have requested a flush of the database.\nThis will IRREVERSIBLY DESTROY all "
            f'data currently in the "{name}" database{also},\nand return each table to an '
            "empty state.\nAre you sure you want to do this?\n\n"
            "    Type 'yes' to continue, or 'no' to cancel: "
        )
        return answer == "yes"


def how(database):
    return (
        "flush their databases first, or add --with-children to delete them too "
        f"(python manage.py flush --database {database} --with-children)"
    )
