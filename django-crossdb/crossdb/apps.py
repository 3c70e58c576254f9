from django.apps import AppConfig


class CrossdbConfig(AppConfig):
    name = "crossdb"
    verbose_name = "cross-database references"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from crossdb import orm  # noqa: F401  (connects the guard's pre_save receiver)
