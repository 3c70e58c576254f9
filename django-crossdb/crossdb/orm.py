"""The ORM's write paths, each through the reference guard (``crossdb.guard``).

``GuardedModel`` is the base of every model in a reference, as parent or child. Every way
Django writes one of its rows keeps two promises: a reference names a committed parent, and
a comparison key (``crossdb.fields.ComparisonKey``, the email's key) is the key of its source.

* ``save()`` runs in a transaction, so the guard a child's ``pre_save`` takes is held until
  the commit; ``save(update_fields=[...])`` naming a key's source writes the key too.
* ``create()``, ``bulk_create()`` (also with ``update_conflicts``), ``bulk_update()`` and a
  re-pointing ``update()`` check the parents inside the guard, with ids converted as Django
  converts them ("1" is user 1); ``update()`` computes a key from a plain value and refuses
  an expression it cannot compute in Python; nothing sets a key column directly.
* ``update()`` refuses to change the id of a row that children name.
* ``delete()`` on a model or a queryset, through ``objects`` or ``_base_manager`` (Django's
  base manager is this one: ``Meta.base_manager_name``), and ``QuerySet._raw_delete()`` go
  to ``crossdb.deletion``, which keeps the children's side first.
* ``loaddata`` saves raw, which still sends ``pre_save``, so fixtures are checked too.

What still bypasses the ORM (raw SQL, another program) is for ``check_integrity`` to find.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.db import models as dj_models
from django.db import router, transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver

from crossdb import causal, deletion, registry, rules
from crossdb.guard import (
    ChangedParentKey,
    MissingParent,
    bounded,
    existing_parents,
    missing_parents,
    require_parents,
    share,
    why_missing,
)
from crossdb.registry import spec

if TYPE_CHECKING:
    from crossdb.registry import Reference, TableSpec

# The model whose bulk_update() checked its rows and computed its keys already: the
# update() it runs underneath (with Case(When(...)) values) is let through once.
_CHECKED_BY_BULK_UPDATE: contextvars.ContextVar[type[dj_models.Model] | None] = (
    contextvars.ContextVar("multids_checked_by_bulk_update", default=None)
)


def _spec(model: type[dj_models.Model]) -> TableSpec | None:

    return spec(model) if model._meta.db_table in registry.specs() else None


def _names(model: type[dj_models.Model], names: Iterable[str]) -> set[str]:
    """Field names as attnames (``user`` or ``user_id`` -> ``user_id``)."""
    return {cast(dj_models.Field, model._meta.get_field(n)).attname for n in names}


def _with_keys(table_spec: TableSpec, names: Iterable[str]) -> list[str]:
    """names plus the key column of every key whose source is among them."""
    names = list(names)
    for key in table_spec.keys:
        if key.source in names and key.column not in names:
            names.append(key.column)
    return names


def _fill_keys(table_spec: TableSpec, objs: Iterable[dj_models.Model]) -> None:
    """Compute each obj's keys from their sources (what ``ComparisonKey.pre_save`` does)."""
    for obj in objs:
        for key in table_spec.keys:
            source = getattr(obj, key.source)
            setattr(obj, key.column, None if source is None else key.normalize(source))


class KeyNotComputable(ValueError):
    """An update would leave a comparison key out of step with its source."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _alters_data(queryset_only: bool = False) -> Callable[[_F], _F]:
    """Django's marks on a method that writes (templates never call it) and, for
    ``QuerySet.delete``, one a manager does not copy: the overrides keep them."""

    def mark(method: _F) -> _F:
        method.alters_data = True  # type: ignore[attr-defined]
        if queryset_only:
            method.queryset_only = True  # type: ignore[attr-defined]
        return method

    return mark


class GuardedQuerySet(dj_models.QuerySet):
    """QuerySet whose bulk writes and deletes keep cross-database references true."""

    def _table_spec(self) -> TableSpec | None:
        return _spec(self.model)

    @_alters_data()
    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        table_spec = self._table_spec()
        if table_spec is None:
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        if kwargs.get("update_conflicts") and kwargs.get("update_fields"):
            kwargs["update_fields"] = _with_keys(
                table_spec, _names(self.model, kwargs["update_fields"])
            )
        if not table_spec.references:
            return super().bulk_create(objs, *args, **kwargs)
        with bounded(self.db), transaction.atomic(using=self.db):
            require_parents(table_spec, self.db, objs)
            return super().bulk_create(objs, *args, **kwargs)

    @_alters_data()
    def bulk_update(
        self, objs: Iterable[Any], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        table_spec = self._table_spec()
        if table_spec is None or not fields:
            return super().bulk_update(objs, fields, batch_size=batch_size)
        objs = list(objs)
        fields = _names(self.model, fields)
        for key in table_spec.keys:
            if key.column in fields:
                raise KeyNotComputable(
                    f"{table_spec.name}.{key.column} is computed from {key.source}; "
                    f"bulk_update {key.source} instead"
                )
        keyed = [k for k in table_spec.keys if k.source in fields]
        if keyed:
            _fill_keys(table_spec, objs)
        fields = _with_keys(table_spec, sorted(fields))
        touched = [r for r in table_spec.references if r.field in fields]
        token = _CHECKED_BY_BULK_UPDATE.set(self.model)
        try:
            with bounded(self.db), transaction.atomic(using=self.db):
                if touched:
                    require_parents(table_spec, self.db, objs, touched)
                return super().bulk_update(objs, fields, batch_size=batch_size)
        finally:
            _CHECKED_BY_BULK_UPDATE.reset(token)

    @_alters_data()
    def update(self, **kwargs: Any) -> int:
        table_spec = self._table_spec()
        if table_spec is None or _CHECKED_BY_BULK_UPDATE.get() is self.model:
            return super().update(**kwargs)
        pk_names = {"pk", self.model._meta.pk.name, self.model._meta.pk.attname}
        if table_spec.children and pk_names & set(kwargs):
            children = ", ".join(dict.fromkeys(r.child for r in table_spec.children))
            raise ChangedParentKey(
                f"the id of a {table_spec.noun} cannot be changed while {children} refer to it; "
                "create the new row, move its children to it, then delete the old one"
            )
        kwargs = self._with_computed_keys(table_spec, kwargs)
        touched = [r for r in table_spec.references if r.field in kwargs]
        if not touched:
            return super().update(**kwargs)
        with bounded(self.db), transaction.atomic(using=self.db):
            share(self.db, tuple(dict.fromkeys(r.parent for r in touched)))
            for reference in touched:
                kwargs[reference.field] = self._checked_parent(table_spec, reference, kwargs)
            causal.record(self.db, (spec(r.parent).alias for r in touched))
            return super().update(**kwargs)

    def _with_computed_keys(self, table_spec: TableSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
        """kwargs with each key computed from its source's new value; refuse a key set
        directly or a source set to an expression (its key can only be computed in Python)."""
        kwargs = dict(kwargs)
        for key in table_spec.keys:
            if key.column in kwargs:
                raise KeyNotComputable(
                    f"{table_spec.name}.{key.column} is computed from {key.source}; "
                    f"update {key.source} instead"
                )
            if key.source not in kwargs:
                continue
            value = kwargs[key.source]
            if value is not None and not isinstance(value, str):
                raise KeyNotComputable(
                    f"update({key.source}=...) needs the value itself, not {value!r}: "
                    f"{table_spec.name}.{key.column} is computed from it in Python; "
                    "set each row's value, or save() each row"
                )
            kwargs[key.column] = None if value is None else key.normalize(value)
        return kwargs

    def _checked_parent(
        self, table_spec: TableSpec, reference: Reference, kwargs: dict[str, Any]
    ) -> Any:
        """The id reference is set to, converted as Django would; MissingParent unless it is
        a committed parent (or None where the field allows it)."""
        field = self.model._meta.get_field(reference.field)
        value = kwargs[reference.field]
        if hasattr(value, "resolve_expression"):
            raise MissingParent(
                f"update({reference.field}={value}) cannot be checked: the reference guard "
                f"needs the {reference.noun}'s id itself, not an expression"
            )
        pk = field.get_prep_value(value)
        if pk is not None and pk not in existing_parents(reference.parent, [pk]):
            raise MissingParent(
                f"{why_missing(reference, pk)}; {table_spec.name}.{reference.field} can only "
                "be set to a committed one"
            )
        return pk

    @_alters_data(queryset_only=True)
    def delete(self) -> tuple[int, dict[str, int]]:

        table_spec = self._table_spec()
        if table_spec is None or not table_spec.children:
            return super().delete()
        pks = list(self.values_list("pk", flat=True))
        result = deletion.delete(table_spec.name, pks)
        return result.total, result.by_model()

    @_alters_data()
    def _raw_delete(self, using: str | None) -> int:
        """Django's fast delete, kept for tables nothing references; a parent's rows go
        through ``crossdb.deletion`` (PROTECT refuses, CASCADE deletes the children first)."""

        table_spec = self._table_spec()
        if table_spec is None or not table_spec.children or deletion.in_progress(table_spec):
            return super()._raw_delete(using)
        pks = list(self.using(using).values_list("pk", flat=True))
        return deletion.delete(table_spec.name, pks).parents


class GuardedModel(dj_models.Model):
    """A model whose saves and deletes go through the reference guard."""

    objects = GuardedQuerySet.as_manager()

    class Meta:
        abstract = True
        # Django reads and deletes through the base manager too (related lookups,
        # Collector, refresh_from_db): make it the guarded one.
        base_manager_name = "objects"

    @_alters_data()
    def save(
        self,
        *args: Any,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Save inside a transaction, so the guard taken by pre_save is held until commit;
        a key whose source is saved is saved with it."""
        using = using or router.db_for_write(type(self), instance=self)
        table_spec = _spec(type(self))
        if update_fields is not None and table_spec is not None and table_spec.keys:
            update_fields = _with_keys(table_spec, _names(type(self), update_fields))
        with bounded(using), transaction.atomic(using=using):
            return super().save(*args, using=using, update_fields=update_fields, **kwargs)

    @_alters_data()
    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:

        table_spec = _spec(type(self))
        if table_spec is None or not table_spec.children:
            return super().delete(using=using, keep_parents=keep_parents)
        result = deletion.delete(table_spec.name, [self.pk])
        return result.total, result.by_model()

    def clean(self) -> None:
        """Apply the loader's rules and check the references, with the loader's words."""

        table_spec = spec(self)
        values = tuple(getattr(self, f) for f in table_spec.fields)
        row, problems = table_spec.clean(values)
        if not problems and table_spec.references:
            problems = [
                rules.parent_problem(reference.field, reference.noun, pk)
                for _index, reference, pk in missing_parents(table_spec, [row])
            ]
        rules.raise_for(problems)


@receiver(pre_save)
def _guard_child_save(
    sender: type[dj_models.Model],
    instance: dj_models.Model,
    raw: bool,
    using: str,
    update_fields: Iterable[str] | None = None,
    **kwargs: Any,
) -> None:
    """Every save of a child that writes a reference (``loaddata``'s raw saves too) checks
    its parents in the guard."""
    if not isinstance(instance, GuardedModel):
        return
    table_spec = _spec(sender)
    if table_spec is None or not table_spec.references:
        return
    references = table_spec.references
    if update_fields is not None:
        references = tuple(r for r in references if r.field in update_fields)
    if references:
        require_parents(table_spec, using, [instance], references)
