"""Route each domain model to its own database; leave Django's own apps on ``default``.

Wire it in settings::

    DATABASE_ROUTERS = ["core.routers.DatabaseRouter"]

and give every alias in ``settings.MULTIDS_DATABASES_FOR_MODELS`` (the one place that says
which model lives where: ``"app_label.modelname" -> alias``) a ``DATABASES`` entry. To move a
model to another database, change its line there and run ``python manage.py migrate_all``.
A domain database also holds the reference guard's counters (``core.models.ReferenceGuard``).
"""

from django.conf import settings

DATABASES_FOR_MODELS = {k.lower(): v for k, v in settings.MULTIDS_DATABASES_FOR_MODELS.items()}

# Aliases that hold exactly the models mapped to them and nothing else.
DOMAIN_DATABASES = frozenset(DATABASES_FOR_MODELS.values())
EVERY_DOMAIN_DATABASE = {"core.referenceguard"}


def database_for(model):
    """Return the alias that stores model, or None for models that live on ``default``."""
    return DATABASES_FOR_MODELS.get(model._meta.label_lower)


class DatabaseRouter:
    def db_for_read(self, model, **hints):
        """Read a domain model from its own database."""
        return database_for(model)

    def db_for_write(self, model, **hints):
        """Write a domain model to its own database."""
        return database_for(model)

    def allow_relation(self, obj1, obj2, **hints):
        """Refuse relations between objects stored in different databases."""
        return None if obj1._state.db == obj2._state.db else False

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        """Create a domain table only in its database, and nothing else in a domain database."""
        if model_name is not None:
            label = f"{app_label}.{model_name}"
            if label in EVERY_DOMAIN_DATABASE:
                return db in DOMAIN_DATABASES
            alias = DATABASES_FOR_MODELS.get(label)
            if alias is not None:
                return db == alias
        return False if db in DOMAIN_DATABASES else None
