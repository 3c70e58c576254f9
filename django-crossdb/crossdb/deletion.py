"""Deleting parents without orphaning their children, as the references declare.

``delete(table, pks)`` is the one way a user, product or any other parent row is deleted:
``delete_row``, the admin, ``Model.delete()``, ``QuerySet.delete()`` (through ``objects``
or the base manager) and ``QuerySet._raw_delete()`` all end here. For each reference to the
table (``crossdb.registry``):

* ``PROTECT``: if any child names one of the rows, nothing is deleted and ``HasChildren``
  says which and how many (unless the caller asks to delete the children too).
* ``CASCADE``: the children are deleted first.

``flush_parents`` does the same for every parent table of a database at once (``flush``),
and ``hold_children`` keeps the children's side still while migrations unapply a parent's
table (``migrate ... zero``).

The order of commits is the guard's (``crossdb.guard``, ``commit_order`` here): every child
database's transaction, holding the guard exclusively, commits before the parent's, so a
crash in between leaves a parent without children, never a child without a parent. That
order cannot be kept inside the caller's open transaction on a children's database, so a
delete there is refused (``crossdb.guard.CommitOrderError``) before anything is written.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models import Count

from crossdb import guard, registry
from crossdb.fields import CASCADE
from crossdb.lookups import query_chunks
from crossdb.registry import spec

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.db.transaction import Atomic

    from crossdb.registry import Reference, TableSpec

# Parent tables whose rows this context is deleting under the exclusive guard: their
# QuerySet._raw_delete() is the deletion itself, not a way around it.
_IN_PROGRESS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "multids_deleting", default=frozenset()
)


class HasChildren(Exception):
    """Rows still have children that a PROTECT reference keeps."""

    def __init__(self, table_spec: TableSpec, counts: dict[tuple[str, Any], int]) -> None:

        self.table = table_spec.name
        self.counts = counts  # {(child table, pk): count}
        first = next(iter(counts))
        child, pk = first
        total = sum(n for (c, p), n in counts.items() if p == pk)
        noun = spec(child).noun if total == 1 else spec(child).plural
        more = len({p for _c, p in counts}) - 1
        self.pk, self.count = pk, total
        super().__init__(
            f"{table_spec.noun} {pk} has {total} {noun}"
            + (f" (and {more} more {table_spec.name} have children)" if more else "")
            + f"; delete {'it' if total == 1 else 'them'} first, "
            f"or delete the {table_spec.noun} with its children"
        )


class ChildrenElsewhere(Exception):
    """Emptying a database would orphan children stored in other databases."""


@dataclass
class Deleted:
    """What a delete removed: rows per table."""

    parents: int = 0
    children: dict[str, int] = field(default_factory=dict)  # child table -> rows deleted
    table: str = ""

    @property
    def total(self) -> int:
        return self.parents + sum(self.children.values())

    def by_model(self) -> dict[str, int]:
        """Django's ``QuerySet.delete()`` shape: {"app_label.Model": count}."""

        counts = {spec(t).model._meta.label: n for t, n in self.children.items() if n}
        if self.parents:
            counts[spec(self.table).model._meta.label] = self.parents
        return counts


def in_progress(table_spec: TableSpec) -> bool:
    """Whether this context is deleting table_spec's rows under the exclusive guard."""
    return table_spec.name in _IN_PROGRESS.get()


def count_children(
    table: str, pks: Iterable[Any], references: Iterable[Reference] | None = None
) -> dict[tuple[str, Any], int]:
    """Return {(child table, parent pk): number of children} for the given parents, over
    references (default: every reference to table)."""
    counts: dict[tuple[str, Any], int] = {}
    for reference in spec(table).children if references is None else references:
        child = spec(reference.child)
        for chunk in query_chunks(connections[child.alias], pks):
            rows = (
                child.model.objects.using(child.alias)
                .filter(**{f"{reference.field}__in": chunk})
                .order_by()
                .values_list(reference.field)
                .annotate(n=Count("pk"))
                .values_list(reference.field, "n")
            )
            for pk, n in rows:
                counts[reference.child, pk] = counts.get((reference.child, pk), 0) + n
    return counts


class _Removal:
    """The parent's side of a ``commit_order``: its transaction, opened once the children's
    side is settled, committed after the children's databases."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.transaction: Atomic | None = None

    def enter_parent(self) -> None:
        """Open the parent's transaction; what the block removes after this commits last."""
        self.transaction = transaction.atomic(using=self.alias)
        self.transaction.__enter__()


@contextlib.contextmanager
def commit_order(parent_alias: str, tables: Iterable[str], doing: str) -> Iterator[_Removal]:
    """Hold the guard exclusive for tables in every database holding their children, and
    commit those databases before the parent's.

    The block settles the children (counts them, refuses, deletes them), calls
    ``enter_parent()`` on what it is given, and removes the parents. Leaving it commits
    every child database, then the parent's. doing ("delete user 3") is what a refusal
    names when the caller holds an open transaction on a children's database.
    """

    parents = [spec(t) for t in tables]
    child_aliases = sorted({spec(r.child).alias for p in parents for r in p.children})
    guard.refuse_open_transactions([a for a in child_aliases if a != parent_alias], doing)
    removal = _Removal(parent_alias)
    token = _IN_PROGRESS.set(_IN_PROGRESS.get() | {p.name for p in parents})
    try:
        with guard.bounded(parent_alias):
            try:
                with contextlib.ExitStack() as children_transactions:
                    for alias in child_aliases:
                        children_transactions.enter_context(guard.bounded(alias))
                        children_transactions.enter_context(transaction.atomic(using=alias))
                        for parent in parents:
                            if any(spec(r.child).alias == alias for r in parent.children):
                                guard.exclusive(alias, parent.name)
                    yield removal
                # Leaving the block committed every child database; now the parent's may.
                _children_committed()
            except BaseException as exc:
                if removal.transaction is not None:
                    removal.transaction.__exit__(type(exc), exc, exc.__traceback__)
                raise
            if removal.transaction is not None:
                removal.transaction.__exit__(None, None, None)
    finally:
        _IN_PROGRESS.reset(token)


def delete(table: str, pks: Iterable[Any], *, with_children: bool = False) -> Deleted:
    """Delete the rows pks of table; return a Deleted. Raise HasChildren for PROTECT.

    with_children=True deletes the children of PROTECT references too (the explicit "delete
    with its orders" of ``delete_row --with-children`` and the admin).
    """

    parent = spec(table)
    pks = list(pks)
    result = Deleted(table=table)
    if not pks:
        return result
    doing = f"delete {parent.noun} {pks[0]}" if len(pks) == 1 else f"delete {len(pks)} {table}"
    with commit_order(parent.alias, [table], doing) as removal:
        _refuse_protected(parent, parent.children, pks, with_children)
        for reference in parent.children:
            child = spec(reference.child)
            deleted = 0
            for chunk in query_chunks(connections[child.alias], pks):
                deleted += dj_delete(
                    child.model.objects.using(child.alias).filter(
                        **{f"{reference.field}__in": chunk}
                    )
                )
            result.children[reference.child] = result.children.get(reference.child, 0) + deleted
        removal.enter_parent()
        for chunk in query_chunks(connections[parent.alias], pks):
            result.parents += dj_delete(
                parent.model.objects.using(parent.alias).filter(pk__in=chunk)
            )
    return result


def _elsewhere(alias: str) -> tuple[list[str], list[Reference]]:
    """(parent tables stored in alias, references to them from other databases)."""

    parents = [s.name for s in registry.specs().values() if s.alias == alias and s.children]
    references = [r for p in parents for r in spec(p).children if spec(r.child).alias != alias]
    return parents, references


def children_elsewhere(alias: str) -> dict[str, int]:
    """{child table: rows naming a parent stored in alias} for children in other databases."""
    return _count_naming(_elsewhere(alias)[1])


def _count_naming(references: Iterable[Reference]) -> dict[str, int]:
    """{child table: rows that name any parent} over references."""

    counts: dict[str, int] = {}
    for reference in references:
        child = spec(reference.child)
        n = (
            child.model.objects.using(child.alias)
            .filter(**{f"{reference.field}__isnull": False})
            .count()
        )
        if n:
            counts[reference.child] = counts.get(reference.child, 0) + n
    return counts


def flush_parents(
    alias: str, flush: Callable[[], object], *, with_children: bool = False
) -> dict[str, int]:
    """Run flush() (which empties every table of alias) in the guard's commit order.

    Children in other databases naming alias's parent tables are counted under the
    exclusive guard: with any, ``ChildrenElsewhere`` refuses, unless with_children, which
    deletes them first (committed before the flush). Return {child table: rows deleted}.
    """

    parents, references = _elsewhere(alias)
    if not references:
        with transaction.atomic(using=alias), _counters_kept(alias):
            flush()
        return {}
    deleted: dict[str, int] = {}
    with commit_order(alias, parents, f"flush {alias}") as removal:
        counts = children_elsewhere(alias)
        if counts and not with_children:
            raise ChildrenElsewhere(_children_words(alias, counts))
        for reference in references:
            child = spec(reference.child)
            rows = child.model.objects.using(child.alias).filter(
                **{f"{reference.field}__isnull": False}
            )
            n = dj_delete(rows)
            if n:
                deleted[reference.child] = deleted.get(reference.child, 0) + n
        removal.enter_parent()
        with _counters_kept(alias):
            flush()
    return deleted


@contextlib.contextmanager
def _counters_kept(alias: str) -> Iterator[None]:
    """Keep alias's deletion counters through a flush (inside one transaction), each moved
    on by one: a loader compares them with what it saw at its start, so they must never go
    back (a flush of orders_db would otherwise reset them to zero, and as many deletes
    later a loader that missed them would take them for unchanged)."""
    from django.apps import apps

    model = apps.get_model("crossdb", "ReferenceGuard")
    connection = connections[alias]
    if model._meta.db_table not in connection.introspection.table_names():
        yield
        return
    kept = list(model.objects.using(alias).values_list("parent", "deletions"))
    yield
    for parent, deletions in kept:
        model.objects.using(alias).update_or_create(
            parent=parent, defaults={"deletions": deletions + 1}
        )


def children_phrase(counts: dict[str, int]) -> str:
    """ "7 orders in orders_db and 1 review in reviews_db" for {child table: rows}."""

    return " and ".join(
        f"{n:,} {spec(child).noun if n == 1 else spec(child).plural} in {spec(child).alias}"
        for child, n in counts.items()
    )


def _children_words(alias: str, counts: dict[str, int]) -> str:
    return f"{children_phrase(counts)} name rows of {alias}; emptying it would leave them orphaned"


@contextlib.contextmanager
def hold_children(alias: str, tables: Sequence[str], doing: str) -> Iterator[None]:
    """Keep every child of tables (stored in alias) still while the block changes their
    tables in ways a transaction cannot hold (migrations commit on their own).

    First the deletion counters move and commit, so every loader that checked its parents
    before checks them again; then the guard is held exclusive in the children's databases,
    the children are counted (``ChildrenElsewhere`` with any), and the block runs; the guard
    is released when it ends. A crash anywhere leaves the counters moved: loaders re-check.
    """

    references = [r for t in tables for r in spec(t).children if spec(r.child).alias != alias]
    child_aliases = sorted({spec(r.child).alias for r in references})
    guard.refuse_open_transactions(child_aliases, doing)
    for moving in (True, False):
        with contextlib.ExitStack() as held:
            for child_alias in child_aliases:
                held.enter_context(guard.bounded(child_alias))
                held.enter_context(transaction.atomic(using=child_alias))
                for table in tables:
                    if any(spec(r.child).alias == child_alias for r in spec(table).children):
                        guard.exclusive(child_alias, table)
            if moving:
                continue  # commit the moved counters
            counts = _count_naming(references)
            if counts:
                raise ChildrenElsewhere(
                    f"cannot {doing}: {children_phrase(counts)} name rows of {alias}; delete "
                    "them first, or do the same to their databases first"
                )
            yield


def _children_committed() -> None:
    """The moment between the two commits (a test makes a crash happen here)."""


def _refuse_protected(
    parent: TableSpec, references: Iterable[Reference], pks: Iterable[Any], with_children: bool
) -> None:
    """Raise HasChildren if a PROTECT reference still has children of pks."""
    protected = [r for r in references if r.on_delete != CASCADE]
    if with_children or not protected:
        return
    counts = count_children(parent.name, pks, protected)  # a CASCADE one of the same table
    if counts:  # does not keep the row
        raise HasChildren(parent, counts)


def dj_delete(queryset: QuerySet[Any]) -> int:
    """Django's own QuerySet.delete() for rows that have no children; return the count."""
    from django.db.models import QuerySet

    return QuerySet.delete(queryset)[0]
