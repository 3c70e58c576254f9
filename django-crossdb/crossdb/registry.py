"""The registry of loadable tables: one ``TableSpec`` per routed model, built from the models.

Every per-table difference the loader, the writers, the guard, ``check_integrity``, the
deletes and the admin need is data here, read off the model declarations:

* which database (``crossdb.routers``), which input fields and their rules (``crossdb.rules``),
* which comparison keys must stay unique (``crossdb.fields.ComparisonKey``),
* which references it holds and what a delete of their parent does
  (``crossdb.fields.CrossDatabaseReference``).

``tables()`` is the commit order: a topological order of the references, parents first, so a
child's batch never has to wait for a table that comes after it. No other module names which
table references which.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django.apps import apps
from django.core.signals import setting_changed
from django.db.models import Field, Model
from django.dispatch import receiver

from crossdb import rules
from crossdb.fields import ComparisonKey, references_of
from crossdb.routers import database_for, databases_for_models

if TYPE_CHECKING:
    from django.db.models import Manager

    class RoutedModel(Model):
        """What mypy knows of a routed model: any model, whose ``objects`` crossdb reads."""

        objects: ClassVar[Manager[Any]]

        class Meta:
            abstract = True


@dataclass(frozen=True)
class Reference:
    """``child.field`` names a row of ``parent``; ``on_delete`` says what a delete does."""

    child: str
    field: str
    parent: str
    on_delete: str

    @property
    def noun(self) -> str:
        return specs()[self.parent].noun


@dataclass(frozen=True)
class Key:
    """A unique column computed from an input field (``email_key`` from ``email``)."""

    column: str
    source: str
    normalize: Callable[[Any], Any]
    max_length: int | None

    def problem(self, key: str | None) -> rules.Problem | None:
        """The Problem for a key its column cannot hold, or None."""
        if key is not None and self.max_length is not None and len(key) > self.max_length:
            return rules.Problem(
                self.source,
                f"{self.source} is too long to compare ({len(key)} characters once "
                f"case-folded; at most {self.max_length})",
            )
        return None


@dataclass(frozen=True, eq=False)
class TableSpec:
    name: str  # the table name, also its name on the command line and in files
    model: type[RoutedModel]
    fields: tuple[
        str, ...
    ]  # input fields in row order: the primary key first, then the model's order
    keys: tuple[Key, ...]  # Key, columns computed from fields and appended to each row
    references: tuple[Reference, ...] = field(default=())  # Reference, held by this table

    @property
    def alias(self) -> str:
        return cast(str, database_for(self.model))  # every spec is of a routed model

    @property
    def noun(self) -> str:
        """How a message names one row: the model's verbose name ("customer 7")."""
        return str(self.model._meta.verbose_name)

    @property
    def plural(self) -> str:
        """How a message names several rows ("2 orders")."""
        return str(self.model._meta.verbose_name_plural)

    @property
    def pk(self) -> str:
        """The primary key's column, the first of every row."""
        return self.fields[0]

    def optional_fields(self) -> tuple[str, ...]:
        """The input fields a file may leave out (``crossdb.rules.may_be_left_out``)."""
        meta = self.model._meta
        return tuple(
            f for f in self.fields if rules.may_be_left_out(cast(Field, meta.get_field(f)))
        )

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The columns a writer writes: the input fields, then the computed keys."""
        return self.fields + tuple(k.column for k in self.keys)

    @cached_property
    def converters(self) -> tuple[rules.Converter, ...]:
        return tuple(
            rules.rule_for(cast(Field, self.model._meta.get_field(f))) for f in self.fields
        )

    @cached_property
    def _key_steps(self) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        return tuple((self.fields.index(k.source), k.normalize) for k in self.keys)

    @cached_property
    def whole_numbers(self) -> bool:
        """Whether every input field is a whole number in a range (``crossdb.loading.columns``)."""
        return not self.keys and all(hasattr(c, "bounds") for c in self.converters)

    def position(self, name: str) -> int:
        return self.columns.index(name)

    def clean(self, values: Sequence[Any]) -> tuple[tuple[Any, ...], Sequence[rules.Problem]]:
        """Return (row in column order, problems) for one row of raw input values.

        The one path every source's rows take; on a valid row it costs one C-level map over
        the converters. A bad row is cleaned again field by field to name every problem.
        """
        try:
            row = tuple(map(operator.call, self.converters, values))
        except rules.Invalid:
            row, problems = rules.collect(values, self.converters, self.fields)
            return row + (None,) * len(self.keys), problems
        except (TypeError, ValueError):  # e.g. the wrong number of values
            row, problems = rules.collect(values, self.converters, self.fields)
            return row + (None,) * len(self.keys), problems
        if self._key_steps:
            keys = tuple(normalize(row[i]) for i, normalize in self._key_steps)
            problems = [p for k, v in zip(self.keys, keys, strict=True) if (p := k.problem(v))]
            row += keys
            if problems:
                return row, problems
        return row, rules.NO_PROBLEMS

    def comparable(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """Row in the form that decides "identical data": keys instead of their sources."""
        return self._comparable_part(row)

    @cached_property
    def _comparable_part(self) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """The values of a row ``comparable`` keeps, as one C-level call (a re-run compares
        every row it reads against the stored one)."""
        skip = {self.fields.index(k.source) for k in self.keys}
        kept = [i for i in range(len(self.columns)) if i not in skip]
        if len(kept) == 1:
            return lambda row: (row[kept[0]],)
        return operator.itemgetter(*kept)

    @property
    def children(self) -> tuple[Reference, ...]:
        """The references other tables hold to this one."""
        return tuple(
            r for spec in specs().values() for r in spec.references if r.parent == self.name
        )

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.parent for r in self.references))


def _spec(model: type[RoutedModel], routed: set[str]) -> TableSpec:
    keys = tuple(
        Key(f.attname, f.source, f.normalize, f.max_length)
        for f in model._meta.concrete_fields
        if isinstance(f, ComparisonKey)
    )
    computed = {k.column for k in keys}
    pk = model._meta.pk.attname
    # The key first, whatever its name and place in the model: every row starts with it.
    fields = (pk,) + tuple(
        f.attname
        for f in model._meta.concrete_fields
        if f.attname not in computed and f.attname != pk
    )
    name = model._meta.db_table
    references = tuple(
        Reference(name, f.attname, f.target._meta.db_table, f.on_delete)
        for f in references_of(model)
        if f.target_or_none() is not None and f.target._meta.db_table in routed
    )
    return TableSpec(name, model, fields, keys, references)


def _commit_order(specs: Iterable[TableSpec]) -> dict[str, TableSpec]:
    """Order specs so every parent comes before its children. Tables caught in a cycle of
    references (``crossdb.checks`` reports it) come last, in the settings' order."""
    ordered: list[TableSpec] = []
    placed: set[str] = set()
    pending = list(specs)
    while pending:
        ready = [s for s in pending if all(p in placed or p == s.name for p in s.parents)]
        if not ready:
            ordered.extend(pending)
            break
        for spec in ready:
            ordered.append(spec)
            placed.add(spec.name)
            pending.remove(spec)
    return {s.name: s for s in ordered}


_specs: dict[str, TableSpec] | None = None  # {table: TableSpec} in commit order, once built


def build() -> dict[str, TableSpec]:
    """Build the registry from the settings and the models (``CrossdbConfig.ready()``, and
    again when the settings change). A name that is not an installed model is left out:
    a misconfiguration is ``crossdb.checks``' error to report, never a traceback here."""
    global _specs
    models: list[type[RoutedModel]] = []
    for label in databases_for_models():
        try:
            models.append(apps.get_model(label))
        except (LookupError, ValueError):
            continue
    routed = {m._meta.db_table for m in models}
    _specs = _commit_order(_spec(model, routed) for model in models)
    return _specs


def specs() -> dict[str, TableSpec]:
    """{table: TableSpec} of every routed model, parents before their children."""
    return _specs if _specs is not None else build()


def tables() -> tuple[str, ...]:
    """The routed tables in commit order (parents first)."""
    return tuple(specs())


def models() -> dict[str, type[RoutedModel]]:
    """{table: model} in commit order."""
    return {name: s.model for name, s in specs().items()}


def parent_tables() -> tuple[str, ...]:
    """The tables other tables reference."""
    return tuple(name for name, s in specs().items() if s.children)


@receiver(setting_changed)
def _rebuild(setting: str, **kwargs: Any) -> None:
    """Tests and ``override_settings`` change CROSSDB: build again on next use."""
    global _specs
    if setting in ("CROSSDB", "DATABASES"):
        _specs = None


def spec(table_or_model: str | type[Model] | Model) -> TableSpec:
    """Return the TableSpec of a table name, a model class or a model instance."""
    if isinstance(table_or_model, str):
        return specs()[table_or_model]
    model = table_or_model if isinstance(table_or_model, type) else type(table_or_model)
    return specs()[model._meta.db_table]


def fields(table: str) -> tuple[str, ...]:
    """Return the input field names of table, in row order."""
    return specs()[table].fields


def alias(table: str) -> str:
    return specs()[table].alias
