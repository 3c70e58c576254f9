"""System checks: what ``manage.py check`` (and every command) says of crossdb's settings.

A misconfiguration is one line naming the setting and the fix, with an id, never a
traceback at import: the registry (``crossdb.registry``) leaves out what it cannot build,
and these checks say why.

* ``crossdb.E001``: ``CROSSDB`` names a setting crossdb does not have.
* ``crossdb.E002``: ``DATABASES_FOR_MODELS`` names a model that is not installed.
* ``crossdb.E003``: ``DATABASES_FOR_MODELS`` maps a model to an alias ``DATABASES`` lacks.
* ``crossdb.E004``: a ``CrossDatabaseReference`` points at a model that is not installed.
* ``crossdb.E005``: a reference's model, or the model it points at, is not routed by
  ``DATABASES_FOR_MODELS`` (crossdb would not know where to look).
* ``crossdb.E006``: references form a cycle (no commit order exists: parents first).
* ``crossdb.E007``: a routed model is not a ``GuardedModel`` (its writes would bypass the
  guard).
* ``crossdb.E008``: ``DATABASE_ROUTERS`` lacks ``crossdb.routers.DatabaseRouter``.
* ``crossdb.E009``: ``REPLICAS`` is not {routed PostgreSQL alias: [replica aliases]}, or
  names a replica alias ``DATABASES`` lacks or whose ENGINE is not
  ``crossdb.backends.replica``.
* ``crossdb.E010``: a replica setting (``CAUSAL_READS``, ``CAUSAL_WAIT_SECONDS``,
  ``REPLICA_MAX_LAG_SECONDS``, ...) is not a boolean or a number in its range.
* ``crossdb.W002``: replicas are configured but ``MIDDLEWARE`` lacks
  ``crossdb.middleware.CausalReadsMiddleware`` (a request would not see the previous
  request's writes).
* ``crossdb.W001``: a routed SQLite database does not open transactions with ``BEGIN
  IMMEDIATE`` (``OPTIONS["transaction_mode"]``), which the guard's SQLite side relies on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.db.models import Model

from crossdb import conf
from crossdb.fields import CrossDatabaseReference, references_of
from crossdb.routers import databases_for_models

ROUTER = "crossdb.routers.DatabaseRouter"


def _setting(name: str) -> str:
    return f'CROSSDB["{name}"]'


@checks.register(checks.Tags.models, checks.Tags.database, "crossdb")
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Every problem of crossdb's configuration, each once."""
    return [
        *_unknown_settings(),
        *_routed_models(),
        *_references(),
        *_cycles(),
        *_router(),
        *_sqlite_transactions(),
        *_replicas(),
    ]


def _unknown_settings() -> list[checks.CheckMessage]:
    given = getattr(settings, "CROSSDB", {})
    if not isinstance(given, dict):
        return [
            checks.Error(
                f"CROSSDB must be a dict of crossdb's settings (got {type(given).__name__})",
                hint=f"Known settings: {', '.join(sorted(conf.DEFAULTS))}.",
                id="crossdb.E001",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for name in sorted(set(given) - set(conf.DEFAULTS)):
        close = difflib.get_close_matches(name, conf.DEFAULTS, n=1)
        hint = f"Did you mean {close[0]!r}?" if close else f"Known: {', '.join(conf.DEFAULTS)}."
        errors.append(
            checks.Error(
                f"CROSSDB names {name!r}, which is not a setting of crossdb",
                hint=hint,
                id="crossdb.E001",
            )
        )
    return errors


def _routed_models() -> list[checks.CheckMessage]:
    from crossdb.orm import GuardedModel

    errors: list[checks.CheckMessage] = []
    for label, alias in databases_for_models().items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            errors.append(
                checks.Error(
                    f"{_setting('DATABASES_FOR_MODELS')} names {label!r}, which is not an "
                    "installed model",
                    hint='Write "app_label.modelname" of a model of INSTALLED_APPS.',
                    id="crossdb.E002",
                )
            )
            continue
        if alias not in settings.DATABASES:
            errors.append(
                checks.Error(
                    f"{_setting('DATABASES_FOR_MODELS')} maps {label!r} to {alias!r}, which "
                    "is not in DATABASES",
                    hint=f"Add DATABASES[{alias!r}], or map the model to one of: "
                    f"{', '.join(settings.DATABASES)}.",
                    id="crossdb.E003",
                )
            )
        if not issubclass(model, GuardedModel):
            errors.append(
                checks.Error(
                    f"{model._meta.label} is routed by {_setting('DATABASES_FOR_MODELS')} but "
                    "is not a crossdb.models.GuardedModel, so its writes bypass the guard",
                    hint=f"Make {model.__name__} a subclass of crossdb.models.GuardedModel.",
                    obj=model,
                    id="crossdb.E007",
                )
            )
    return errors


def _reference_fields(
    models: Iterable[type[Model]] | None = None,
) -> Iterator[tuple[type[Model], CrossDatabaseReference]]:
    """(model, field) for every CrossDatabaseReference of models (default: every installed
    model)."""
    for model in apps.get_models() if models is None else models:
        for field in references_of(model):
            yield model, field


def _references(models: Iterable[type[Model]] | None = None) -> list[checks.CheckMessage]:
    routed = databases_for_models()
    errors: list[checks.CheckMessage] = []
    for model, field in _reference_fields(models):
        where = f"{model._meta.label}.{field.name}"
        target = field.target_or_none()
        if target is None:
            errors.append(
                checks.Error(
                    f"{where} references {field.to!r}, which is not an installed model",
                    hint='Write "app_label.ModelName" of a model of INSTALLED_APPS.',
                    obj=field,
                    id="crossdb.E004",
                )
            )
            continue
        for end in (model, target):
            if end._meta.label_lower not in routed:
                errors.append(
                    checks.Error(
                        f"{where} references {target._meta.label}, but "
                        f"{end._meta.label_lower!r} is not in "
                        f"{_setting('DATABASES_FOR_MODELS')}",
                        hint=f"Map {end._meta.label_lower!r} to the alias that stores it.",
                        obj=field,
                        id="crossdb.E005",
                    )
                )
    return errors


def _cycles(models: Iterable[type[Model]] | None = None) -> list[checks.CheckMessage]:
    """Tables whose references lead back to themselves (an edge to itself is allowed: the
    row's parent is then in the same table and database)."""
    edges: dict[str, set[str]] = {}
    for model, field in _reference_fields(models):
        target = field.target_or_none()
        if target is not None and target is not model:
            edges.setdefault(model._meta.label, set()).add(target._meta.label)
    placed: set[str] = set()
    pending = set(edges) | {t for ts in edges.values() for t in ts}
    while True:
        ready = {m for m in pending if edges.get(m, set()) <= placed}
        if not ready:
            break
        placed |= ready
        pending -= ready
    if not pending:
        return []
    return [
        checks.Error(
            f"cross-database references form a cycle among: {', '.join(sorted(pending))}",
            hint="A load commits parents before children; make one of these references "
            "point the other way, or keep those models in one database with a ForeignKey.",
            id="crossdb.E006",
        )
    ]


def _router() -> list[checks.CheckMessage]:
    if ROUTER in getattr(settings, "DATABASE_ROUTERS", []) or not databases_for_models():
        return []
    return [
        checks.Error(
            f"DATABASE_ROUTERS lacks {ROUTER!r}, so the models of "
            f"{_setting('DATABASES_FOR_MODELS')} are read and written on 'default'",
            hint=f'DATABASE_ROUTERS = ["{ROUTER}"]',
            id="crossdb.E008",
        )
    ]


def _sqlite_transactions() -> list[checks.CheckMessage]:
    warnings: list[checks.CheckMessage] = []
    for alias in sorted(set(databases_for_models().values()) & set(settings.DATABASES)):
        config = settings.DATABASES[alias]
        if not config.get("ENGINE", "").endswith("sqlite3"):
            continue
        if (config.get("OPTIONS") or {}).get("transaction_mode") != "IMMEDIATE":
            warnings.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] is SQLite without "
                    "OPTIONS['transaction_mode'] = 'IMMEDIATE'",
                    hint="The guard holds a SQLite database's write lock from the start of "
                    "each transaction; without it concurrent writers fail with 'database is "
                    "locked' instead of waiting.",
                    id="crossdb.W001",
                )
            )
    return warnings


MIDDLEWARE = "crossdb.middleware.CausalReadsMiddleware"
REPLICA_NUMBERS = {  # setting: (lowest allowed, whether the lowest itself is allowed)
    "CAUSAL_WAIT_SECONDS": (0, True),
    "REPLICA_MAX_LAG_SECONDS": (0, False),
    "REPLICA_MAX_LAG_BYTES": (0, False),
    "REPLICA_CHECK_SECONDS": (0, True),
    "REPLICA_RETRY_SECONDS": (0, True),
}


def _replicas() -> list[checks.CheckMessage]:
    from crossdb.replicas import ENGINE

    if not isinstance(getattr(settings, "CROSSDB", {}), dict):
        return []  # E001 says so
    errors: list[checks.CheckMessage] = []
    given = conf.get("REPLICAS")
    if not isinstance(given, dict):
        given = None
    for aliases in (given or {}).values():
        if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
            given = None
            break
    if given is None:
        return [
            checks.Error(
                f"{_setting('REPLICAS')} must map a routed alias to a list of replica aliases",
                hint='For example {"books": ["books_replica_1"]}.',
                id="crossdb.E009",
            )
        ]
    routed = set(databases_for_models().values())
    for primary, aliases in given.items():
        config = settings.DATABASES.get(primary, {})
        if primary not in routed or config.get("ENGINE") != "django.db.backends.postgresql":
            errors.append(
                checks.Error(
                    f"{_setting('REPLICAS')} lists replicas of {primary!r}, which is not a "
                    "PostgreSQL database of DATABASES_FOR_MODELS",
                    hint="Streaming replicas are for routed PostgreSQL primaries.",
                    id="crossdb.E009",
                )
            )
        for alias in aliases:
            engine = settings.DATABASES.get(alias, {}).get("ENGINE")
            if engine != ENGINE:
                missing = alias not in settings.DATABASES
                errors.append(
                    checks.Error(
                        f"{_setting('REPLICAS')} names {alias!r} as a replica of {primary!r}, "
                        + (
                            "which is not in DATABASES"
                            if missing
                            else f"whose ENGINE is {engine!r}"
                        ),
                        hint=f"Give DATABASES[{alias!r}] the replica's URL and "
                        f"ENGINE = {ENGINE!r}.",
                        id="crossdb.E009",
                    )
                )
    if not isinstance(conf.get("CAUSAL_READS"), bool):
        errors.append(
            checks.Error(
                f"{_setting('CAUSAL_READS')} must be True or False",
                id="crossdb.E010",
            )
        )
    for name, (lowest, inclusive) in REPLICA_NUMBERS.items():
        value = conf.get(name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value != value or value < lowest or (value == lowest and not inclusive):
            bound = f"{lowest} or more" if inclusive else f"above {lowest}"
            errors.append(
                checks.Error(
                    f"{_setting(name)} must be a number {bound} (got {value!r})",
                    id="crossdb.E010",
                )
            )
    if given and MIDDLEWARE not in settings.MIDDLEWARE:
        errors.append(
            checks.Warning(
                f"{_setting('REPLICAS')} lists replicas but MIDDLEWARE lacks {MIDDLEWARE!r}",
                hint="Without it a request may read a replica that has not replayed the "
                "previous request's writes.",
                id="crossdb.W002",
            )
        )
    return errors
