"""The list filters crossdb's admins build on. Each parses its own parameter and ignores (or
refuses, for ids) a value it does not expect: they are the only lookups the URL may name
(``MultiDBModelAdmin.lookup_allowed``).

* ``ParentIdFilter`` / ``reference_filter``: the children of one parent, one per reference.
* ``RangeFilter``: a numeric field by fixed brackets, for a project's own filters.
"""

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Q

from crossdb.admin.base import parse_key


class RangeFilter(admin.SimpleListFilter):
    """Filter a numeric field by fixed brackets ``(label, low, high)``; high None is open."""

    field: str | None = None
    brackets: tuple[tuple[str, Any, Any], ...] = ()  # (label, low, high)

    def lookups(self, request, model_admin):
        return [(str(i), label) for i, (label, _low, _high) in enumerate(self.brackets)]

    def queryset(self, request, queryset):
        value = self.value() or ""
        known = [str(i) for i in range(len(self.brackets))]
        index = known.index(value) if value in known else None
        if index is None:
            return queryset
        _label, low, high = self.brackets[index]
        condition = Q(**{f"{self.field}__gte": low})
        if high is not None:
            condition &= Q(**{f"{self.field}__lt": high})
        return queryset.filter(condition)


class ParentIdFilter(admin.SimpleListFilter):
    """The children of one parent (``?user_id=7``), shown only while it is in use.

    The delete page of a parent links here; the filter is how the URL may name that
    column at all, since ``lookup_allowed`` accepts no lookup of its own. One subclass per
    declared reference, made by ``reference_filter``.
    """

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, f"{self.title} {value}")] if value else []

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        key = queryset.model._meta.get_field(self.parameter_name).target_field
        pk = parse_key(key, self.value())
        if pk is None:
            raise IncorrectLookupParameters(f"{self.parameter_name} must be an id")
        return queryset.filter(**{self.parameter_name: pk})


_REFERENCE_FILTERS = {}


def reference_filter(reference):
    """Return the ParentIdFilter of one declared reference (``?user_id=7``), made once."""
    key = (reference.child, reference.field)
    if key not in _REFERENCE_FILTERS:
        name = "".join(part.title() for part in reference.field.split("_")) + "Filter"
        _REFERENCE_FILTERS[key] = type(
            name,
            (ParentIdFilter,),
            {"title": reference.noun, "parameter_name": reference.field, "__module__": __name__},
        )
    return _REFERENCE_FILTERS[key]
