from django.apps import AppConfig


class KindsConfig(AppConfig):
    """Two tables of every kind of field crossdb loads: a parent keyed by UUIDs and a child
    keyed by text, with a nullable reference, dates, moments, booleans, floats and defaults
    (tests/test_kinds.py, and the verdict property of tests/test_verdicts.py)."""

    name = "tests.kinds"
    label = "kinds"
    default_auto_field = "django.db.models.BigAutoField"
