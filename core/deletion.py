"""Deleting parents without orphaning their children, as the references declare.

``delete(table, pks)`` is the one way a user, product or any other parent row is deleted:
``delete_row``, the admin, ``Model.delete()`` and ``QuerySet.delete()`` all end here. For
each reference to the table (``core.tables``):

* ``PROTECT``: if any child names one of the rows, nothing is deleted and ``HasChildren``
  says which and how many (unless the caller asks to delete the children too).
* ``CASCADE``: the children are deleted first.

The order of commits is the guard's (``core.guard``): every child database's transaction,
holding the guard exclusively, commits before the parent's, so a crash in between leaves a
parent without children, never a child without a parent.
"""

import contextlib
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Count

from core import guard
from core.lookups import query_chunks
from core.references import CASCADE


class HasChildren(Exception):
    """Rows still have children that a PROTECT reference keeps."""

    def __init__(self, table_spec, counts):
        self.table = table_spec.name
        self.counts = counts  # {(child table, pk): count}
        first = next(iter(counts))
        child, pk = first
        total = sum(n for (c, p), n in counts.items() if p == pk)
        noun = child.removesuffix("s") if total == 1 else child
        more = len({p for _c, p in counts}) - 1
        self.pk, self.count = pk, total
        super().__init__(
            f"{table_spec.noun} {pk} has {total} {noun}"
            + (f" (and {more} more {table_spec.name} have children)" if more else "")
            + f"; delete {'it' if total == 1 else 'them'} first, "
            f"or delete the {table_spec.noun} with its children"
        )


@dataclass
class Deleted:
    """What a delete removed: rows per table."""

    parents: int = 0
    children: dict = field(default_factory=dict)  # child table -> rows deleted
    table: str = ""

    @property
    def total(self):
        return self.parents + sum(self.children.values())

    def by_model(self):
        """Django's ``QuerySet.delete()`` shape: {"app_label.Model": count}."""
        from core.tables import spec

        counts = {spec(t).model._meta.label: n for t, n in self.children.items() if n}
        if self.parents:
            counts[spec(self.table).model._meta.label] = self.parents
        return counts


def count_children(table, pks):
    """Return {(child table, parent pk): number of children} for the given parents."""
    from core.tables import spec

    counts = {}
    for reference in spec(table).children:
        child = spec(reference.child)
        for chunk in query_chunks(_connection(child.alias), pks):
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


def _connection(alias):
    from django.db import connections

    return connections[alias]


def delete(table, pks, *, with_children=False):
    """Delete the rows pks of table; return a Deleted. Raise HasChildren for PROTECT.

    with_children=True deletes the children of PROTECT references too (the explicit "delete
    with its orders" of ``delete_row --with-orders`` and the admin).
    """
    from core.tables import spec

    parent = spec(table)
    pks = list(pks)
    result = Deleted(table=table)
    if not pks:
        return result
    references = parent.children
    child_aliases = sorted({spec(r.child).alias for r in references})
    parent_transaction = None
    try:
        with contextlib.ExitStack() as children_transactions:
            for alias in child_aliases:
                children_transactions.enter_context(transaction.atomic(using=alias))
                guard.exclusive(alias, table)
            _refuse_protected(parent, references, pks, with_children)
            for reference in references:
                child = spec(reference.child)
                deleted = 0
                for chunk in query_chunks(_connection(child.alias), pks):
                    deleted += dj_delete(
                        child.model.objects.using(child.alias).filter(
                            **{f"{reference.field}__in": chunk}
                        )
                    )
                result.children[reference.child] = result.children.get(reference.child, 0) + deleted
            parent_transaction = transaction.atomic(using=parent.alias)
            parent_transaction.__enter__()
            for chunk in query_chunks(_connection(parent.alias), pks):
                result.parents += dj_delete(
                    parent.model.objects.using(parent.alias).filter(pk__in=chunk)
                )
        # Leaving the block committed every child database; now the parent's may commit.
        _children_committed()
    except BaseException as exc:
        if parent_transaction is not None:
            parent_transaction.__exit__(type(exc), exc, exc.__traceback__)
        raise
    parent_transaction.__exit__(None, None, None)
    return result


def _children_committed():
    """The moment between the two commits (a test makes a crash happen here)."""


def _refuse_protected(parent, references, pks, with_children):
    """Raise HasChildren if a PROTECT reference still has children of pks."""
    protected = {r.child for r in references if r.on_delete != CASCADE}
    if with_children or not protected:
        return
    counts = {key: n for key, n in count_children(parent.name, pks).items() if key[0] in protected}
    if counts:
        raise HasChildren(parent, counts)


def dj_delete(queryset):
    """Django's own QuerySet.delete() for rows that have no children; return the count."""
    from django.db.models import QuerySet

    return QuerySet.delete(queryset)[0]
