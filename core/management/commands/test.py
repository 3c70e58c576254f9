import sys

from django.core.management.base import BaseCommand, CommandError

MESSAGE = (
    "this project's tests run with pytest, not Django's test runner: "
    "run `make test` (lint, then every test), or .venv/bin/pytest [PATH or -k NAME]"
)


class Command(BaseCommand):
    """Replace Django's ``test``: the suite is plain pytest functions and fixtures, which
    Django's runner does not collect, so it would run none of them."""

    help = f"Say how to run the test suite: {MESSAGE}."

    def run_from_argv(self, argv):
        if {"-h", "--help"} & set(argv[2:]):
            return super().run_from_argv(argv)
        # Any of Django's test options may follow; none of them applies here.
        sys.stderr.write(f"{MESSAGE}\n")
        sys.exit(2)

    def handle(self, *args, **options):
        raise CommandError(MESSAGE, returncode=2)
