"""What every ModelAdmin of core shares: the model's own database, named in every query, and
the URL treated as input (declared filters only, ids parsed strictly, search bounded)."""

import unicodedata

from django.contrib import admin
from django.contrib.auth import get_permission_codename

from core import validation
from core.routers import database_for

MAX_SEARCH_TERMS = 10  # each term is one more OR (or one more query on users_db)


def parse_id(text):
    """Return text as an id (1 to 2**63-1) if it is one written in ASCII digits, else None.

    ``str.isdigit()`` alone accepts "²" and "٣", which ``int()`` refuses or reads; an id
    beyond the 64-bit range makes SQLite raise OverflowError and PostgreSQL a DataError.
    """
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 1 <= number <= validation.ID_MAX else None


def searchable(text):
    """Drop control characters (PostgreSQL refuses NUL in a string) and keep the first terms."""
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in "\t\n")
    return " ".join(text.split()[:MAX_SEARCH_TERMS])


def may(request, action, model):
    """Whether the logged-in user has Django's ``action`` permission on model."""
    opts = model._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


class MultiDBModelAdmin(admin.ModelAdmin):
    """Read and write the model in the database the router gives it, always by name."""

    @property
    def using(self):
        return database_for(self.model)

    def get_queryset(self, request):
        return super().get_queryset(request).using(self.using)

    def save_model(self, request, obj, form, change):
        obj.save(using=self.using)

    def delete_model(self, request, obj):
        obj.delete(using=self.using)

    def lookup_allowed(self, lookup, value, request=None):
        """Accept only the parameters of the declared list filters (each parses its own).

        Django accepts any lookup on the model's own fields here: ``?email__regex=`` with
        a catastrophic pattern, ``?id__in=`` with a number no database can hold.
        """
        return lookup in {
            f.parameter_name
            for f in self.get_list_filter(request)
            if isinstance(f, type) and issubclass(f, admin.SimpleListFilter)
        }

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, searchable(search_term))

    def get_object(self, request, object_id, from_field=None):
        """Return None (Django's "does not exist") for anything that is not an id."""
        if from_field is None and parse_id(object_id) is None:
            return None
        return super().get_object(request, object_id, from_field)


class NextIdMixin:
    """Offer the next free id on the add form (ids are given, not generated, here)."""

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        last = self.get_queryset(request).order_by("-pk").values_list("pk", flat=True).first()
        initial.setdefault("id", (last or 0) + 1)
        return initial

    def get_readonly_fields(self, request, obj=None):
        """Freeze the id of a stored row: changing it would store a second row."""
        readonly = tuple(super().get_readonly_fields(request, obj))
        return readonly + ("id",) if obj is not None else readonly
