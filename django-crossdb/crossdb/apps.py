from django.apps import AppConfig


class CrossdbConfig(AppConfig):
    name = "crossdb"
    verbose_name = "cross-database references"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Build the table registry from the settings and the models, register the system
        checks that report what it could not build, and connect the guard's receiver."""
        from crossdb import checks, orm, registry  # noqa: F401  (checks and orm register)

        registry.build()
