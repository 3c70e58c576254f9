from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "multids data"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from core import logins  # noqa: F401  (logs and counts every failed login)
