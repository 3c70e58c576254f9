from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    """A fourth table in a fourth database, declared only here: the proof that multids
    derives everything from the references (tests/test_fourth_table.py)."""

    name = "tests.reviews"
    label = "reviews"
    default_auto_field = "django.db.models.BigAutoField"
