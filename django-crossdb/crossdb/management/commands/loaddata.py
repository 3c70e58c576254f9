"""``loaddata`` whose refusals are one line, not a traceback.

Fixtures are saved raw, which still sends ``pre_save``, so the reference guard checks every
child a fixture holds (``crossdb.orm``). Django turns such a refusal into a traceback
ending in the right message; here it is a ``CommandError`` with that message alone, and so
is a fixture loaded before the databases are migrated.
"""

from django.core.management.base import CommandError
from django.core.management.commands import loaddata
from django.db import DatabaseError

from crossdb.databases import NotReady, check_ready
from crossdb.guard import CommitOrderError, GuardTimeout, MissingParent


class Command(loaddata.Command):
    def handle(self, *fixture_labels, **options):
        try:
            check_ready([options["database"]])
        except NotReady as exc:
            raise CommandError(str(exc)) from exc
        try:
            return super().handle(*fixture_labels, **options)
        except (MissingParent, CommitOrderError, GuardTimeout) as exc:
            raise CommandError(_first_line(exc)) from exc
        except DatabaseError as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                raise CommandError(
                    f"{_first_line(exc)}; run python manage.py migrate_all first"
                ) from exc
            raise


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
