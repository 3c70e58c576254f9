#!/usr/bin/env python
"""The library example's manage.py (README.md: migrate_all, insert_data --from data)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "librarysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
