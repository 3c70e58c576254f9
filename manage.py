#!/usr/bin/env python
"""Django's command-line utility for multids."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # a setting from the environment (a URL, a size, the secret key): one line, no traceback
        sys.exit(f"django.core.exceptions.ImproperlyConfigured: {exc}")


if __name__ == "__main__":
    main()
