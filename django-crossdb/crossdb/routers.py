"""Route each model named in ``CROSSDB["DATABASES_FOR_MODELS"]`` to its database; have no
opinion on anything else (Django's own apps stay on ``default``).

Wire it in settings::

    DATABASE_ROUTERS = ["crossdb.routers.DatabaseRouter"]
    CROSSDB = {"DATABASES_FOR_MODELS": {"library.member": "members", "library.book": "books"}}

and give every alias named there a ``DATABASES`` entry (``manage.py check`` says which are
missing, ``crossdb.checks``). To move a model to another database, change its line and run
``python manage.py migrate_all``. Every database named there also holds crossdb's guard
counters (``crossdb.models.ReferenceGuard``), and holds nothing else.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from crossdb import conf, replicas

# Models every routed database holds besides its own (the guard's counters, and the
# positions of parent databases its rows depend on: crossdb.causal).
EVERY_DOMAIN_DATABASE = {"crossdb.referenceguard", "crossdb.causalposition"}


def databases_for_models() -> dict[str, str]:
    """{"app_label.modelname": alias}, from the settings, read on each call."""
    return {k.lower(): v for k, v in conf.get("DATABASES_FOR_MODELS").items()}


def domain_databases() -> frozenset[str]:
    """The aliases that hold routed models (and nothing else)."""
    return frozenset(databases_for_models().values())


def database_for(model: type[Model] | Model) -> str | None:
    """Return the alias that stores model, or None for models crossdb does not route."""
    return databases_for_models().get(model._meta.label_lower)


class DatabaseRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """Read a routed model from its own database, or from one of its replicas where the
        reader's writes and the parents of the children it read are replayed
        (``crossdb.causal``)."""
        if not replicas.configured():
            return database_for(model)
        from crossdb import causal  # it reads the registry, which imports this module

        return causal.for_model(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """Write a routed model to its own database."""
        return database_for(model)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """Refuse relations between objects stored in different databases."""
        return None if obj1._state.db == obj2._state.db else False

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Create a routed table only in its database, and nothing else in such a database."""
        if replicas.is_replica(db):
            return False  # a replica is written by replication alone
        domains = domain_databases()
        if model_name is not None:
            label = f"{app_label}.{model_name}"
            if label in EVERY_DOMAIN_DATABASE:
                return db in domains
            alias = databases_for_models().get(label)
            if alias is not None:
                return db == alias
        return False if db in domains else None
