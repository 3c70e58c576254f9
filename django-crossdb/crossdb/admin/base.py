"""What every ModelAdmin of a registered table shares: the model's own database, named in
every query; the URL treated as input (declared filters only, ids parsed strictly, search
bounded); the one form (``crossdb.admin.forms``); and ``TableAdmin``, which reads everything
else off the table's spec (``crossdb.registry``) so the parent and referencing admins add only
what the declarations ask for."""

import unicodedata
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.db import models
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse

from crossdb import causal, guard, registry, replicas, rules
from crossdb.admin.forms import ValidatedForm
from crossdb.routers import database_for

MAX_SEARCH_TERMS = 10  # each term is one more OR (or one more query on users_db)
# The longest value a list's URL parameter (search box, filter, sorting, page) may have.
# SQLite refuses a LIKE pattern over 50,000 bytes ("LIKE or GLOB pattern too complex"), and
# no name, email or domain comes near 1,000 characters.
MAX_PARAMETER_LENGTH = 1000
REFUSED_TEMPLATE = "admin/crossdb/refused.html"
# Facets (?_facets=1) count every choice of every filter over the table: 5-9 s per page on
# a million orders. Above this many rows a list has none (at this size, a twentieth of that).
FACETS_MAX_ROWS = 50_000
# The most rows one admin action may select: the delete actions list each row they delete.
MAX_ACTION_ROWS = 1000


def parse_id(text):
    """Return text as an id (1 to 2**63-1) if it is one written in ASCII digits, else None.

    ``str.isdigit()`` alone accepts "²" and "٣", which ``int()`` refuses or reads; an id
    beyond the 64-bit range makes SQLite raise OverflowError and PostgreSQL a DataError;
    ``int()`` itself refuses more than 4,300 digits with a ValueError.
    """
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        return None
    text = text.lstrip("0") or "0"  # int() counts leading zeros towards its limit
    if len(text) > len(str(rules.ID_MAX)):
        return None
    number = int(text)
    return number if 1 <= number <= rules.ID_MAX else None


def parse_key(key, text):
    """Return text as a value of key (a primary key field, or the key a reference names:
    ``CrossDatabaseReference.target_field``) if it is one, else None: a whole number as
    ``parse_id`` reads it, a UUID, or text within the key's length."""
    if not isinstance(text, str):
        return None
    if key.get_internal_type() in rules.INTEGER_KINDS:
        return parse_id(text)
    try:
        return rules.key_rule(key.attname, key)(text)
    except rules.Invalid:
        return None


def overlong_parameter(query):
    """Say which parameter of a QueryDict is longer than MAX_PARAMETER_LENGTH, or None."""
    for name, values in query.lists():
        for value in values:
            if len(value) > MAX_PARAMETER_LENGTH:
                return (
                    f"The {name[:50]} parameter is {len(value):,} characters long; "
                    f"at most {MAX_PARAMETER_LENGTH:,} are accepted."
                )
    return None


def refused(request, model_admin, message, status=400, title="Not accepted"):
    """A 400 page in the admin's look, saying in one line what was not accepted."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.opts,
        "message": message,
    }
    return TemplateResponse(request, REFUSED_TEMPLATE, context, status=status)


def searchable(text):
    """Drop control characters (PostgreSQL refuses NUL in a string) and keep the first terms."""
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in "\t\n")
    return " ".join(text.split()[:MAX_SEARCH_TERMS])


def may(request, action, model):
    """Whether the logged-in user has Django's ``action`` permission on model."""
    opts = model._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


def may_view(request, model):
    """Whether the account may see model's rows: view or change permission, as the admin's
    own ``has_view_permission`` decides."""
    return may(request, "view", model) or may(request, "change", model)


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

    def changelist_view(self, request, extra_context=None):
        """Refuse (400) a parameter too long to be a search or a filter, before any query."""
        problem = overlong_parameter(request.GET)
        if problem:
            return refused(request, self, problem)
        return self.bounded(request, super().changelist_view, request, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return self.bounded(
            request, super().changeform_view, request, object_id, form_url, extra_context
        )

    def delete_view(self, request, object_id, extra_context=None):
        return self.bounded(request, super().delete_view, request, object_id, extra_context)

    def bounded(self, request, view, *args):
        """Run view with every wait for the model's database bounded (``crossdb.guard``): a
        load or a delete holding it past the bound is a 503 page saying what it waited for,
        not a 500. Writes (POST) set the bound; a read only needs the translation (SQLite:
        the admin's own transaction waits for the file's write lock, with the busy timeout
        the bound is by default)."""
        try:
            if request.method == "POST":
                with guard.bounded(self.using, "the database's write lock"):
                    return view(*args)
            with guard.translated(self.using, "the database's write lock"):
                return view(*args)
        except guard.GuardTimeout as exc:
            return refused(request, self, str(exc), status=503, title="Busy")

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
        """Return None (Django's "does not exist") for anything that is not a key."""
        if from_field is None and parse_key(self.model._meta.pk, object_id) is None:
            return None
        return super().get_object(request, object_id, from_field)


if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin
else:
    _AdminBase = object


class NextIdMixin(_AdminBase):
    """Offer the next free id on the add form (ids are given, not generated, here): a
    whole-number key only; a UUID or a text key (an ISBN) has no next one to offer."""

    def get_changeform_initial_data(self, request):
        initial: dict[str, Any] = super().get_changeform_initial_data(request)
        key = self.model._meta.pk
        if isinstance(key, models.IntegerField):
            last = self.get_queryset(request).order_by("-pk").values_list("pk", flat=True).first()
            initial.setdefault(key.name, (last or 0) + 1)
        return initial

    def get_readonly_fields(self, request, obj=None):
        """Freeze the key of a stored row, whatever its name: changing it would store a
        second row."""
        readonly = tuple(super().get_readonly_fields(request, obj))
        return readonly + (self.model._meta.pk.name,) if obj is not None else readonly


def admin_url(request, site, model, view, *args):
    """The URL of model's admin ``view`` ("change", "changelist"), or None if the account
    may not open it or the model has no admin (a link would only lead to a 403 or 404)."""
    if not site.is_registered(model):
        return None
    if not may_view(request, model):
        return None
    opts = model._meta
    try:
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args, current_app=site.name
        )
    except NoReverseMatch:
        return None


class TableChangeList(ChangeList):
    """A changelist that lets the admin annotate the page's rows in one pass (a few queries
    per page, never one per row), and shows facets (``?_facets=1``) only for small registry."""

    model_admin: "TableAdmin"

    def __init__(self, request, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        if self.add_facets and self.above_facets_size():
            messages.info(
                request,
                f"Counts are not shown for lists of more than {FACETS_MAX_ROWS:,} "
                f"{self.opts.verbose_name_plural}.",
            )
            self.add_facets = self.is_facets_optional = False
        elif self.result_count > FACETS_MAX_ROWS:  # counted for the page anyway
            self.is_facets_optional = False  # no "Show counts" link that would be refused

    def above_facets_size(self):
        """Whether the table has more than FACETS_MAX_ROWS rows, at the cost of reading that
        many at most (a COUNT over a LIMIT), however large it is."""
        rows = self.root_queryset.order_by()[: FACETS_MAX_ROWS + 1]
        return rows.count() > FACETS_MAX_ROWS

    def get_queryset(self, request, exclude_parameters=None):
        """The page's rows from a replica where it shows the reader's writes
        (``crossdb.causal``), else from the primary. A POST (an action, the list's edits)
        changes the rows it reads: those stay on the primary."""
        queryset = super().get_queryset(request, exclude_parameters)
        if request.method not in ("GET", "HEAD") or not replicas.of(queryset.db):
            return queryset
        return queryset.using(causal.for_model(self.model))

    def get_results(self, request):
        super().get_results(request)
        self.result_list = self.model_admin.annotate_results(request, list(self.result_list))


def selected_count(request, queryset):
    """How many rows an action POST selects: the ticked boxes, or with "select all" every
    row of the list as filtered (one COUNT)."""
    if forms.BooleanField(required=False).to_python(request.POST.get("select_across")):
        return queryset.order_by().count()
    return len(set(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)))


class TableAdmin(NextIdMixin, MultiDBModelAdmin):
    """The admin of one registered table, derived from its spec.

    The list shows the table's fields in row order; subclasses replace a field by a column
    of their own (``column_for``) or add columns after them (``trailing_columns``), and
    define those columns as attributes of the instance (``generated_attributes``), since
    they depend on the model the admin is registered for. A subclass that sets
    ``list_display`` itself keeps it.
    """

    form = ValidatedForm
    max_action_rows = MAX_ACTION_ROWS
    # Django's list with an Import button (crossdb.admin.imports) for accounts that may add
    change_list_template = "admin/crossdb/change_list.html"

    def __init__(self, model, admin_site):
        self.spec = registry.spec(model)
        super().__init__(model, admin_site)
        for name, value in self.generated_attributes().items():
            setattr(self, name, value)
        if self.list_display == admin.ModelAdmin.list_display:  # type: ignore[misc]  # the default
            self.list_display = self.default_list_display()

    def generated_attributes(self):
        """{name: display function} for the columns and read-only fields of this table."""
        return {}

    def column_for(self, field):
        return field

    def trailing_columns(self):
        return ()

    def default_list_display(self):
        return (*(self.column_for(f) for f in self.spec.fields), *self.trailing_columns())

    def get_sortable_by(self, request):
        """The columns this table's own database can sort: its fields, and the columns that
        name one (a reference column sorts by the id it shows first)."""
        if self.sortable_by is not None:
            return self.sortable_by
        fields = {f.name for f in self.model._meta.concrete_fields}
        return [
            c
            # django-stubs allows callables in list_display; these columns are names
            for c in self.get_list_display(request)
            if c in fields or getattr(getattr(self, c, None), "admin_order_field", None)  # type: ignore[arg-type]
        ]

    def get_changelist(self, request, **kwargs):
        return TableChangeList

    def get_urls(self):
        """Django's URLs, after the table's import page (``import/``; before Django's
        ``<object_id>/`` patterns, which would take it for an id)."""
        from crossdb.admin.imports import table_import  # its module imports the views

        opts = self.opts
        page = path(
            "import/",
            self.admin_site.admin_view(table_import),
            {"table": self.spec.name},
            name=f"{opts.app_label}_{opts.model_name}_import",
        )
        return [page, *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        """The list, with the link to the import page for an account that may add."""
        if self.has_add_permission(request):
            opts = self.opts
            url = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_import", current_app=self.admin_site.name
            )
            extra_context = {**(extra_context or {}), "import_url": url}
        return super().changelist_view(request, extra_context)

    def response_action(self, request, queryset):
        """Refuse an action on more than ``max_action_rows`` rows before it runs, and say so.

        "Select all" on 100,000 customers made "delete selected" render a confirmation page
        of 25 MB in 14 s (issue 32); the actions bar says the limit beside that link.
        """
        count = selected_count(request, queryset)
        if count > self.max_action_rows:
            plural = self.opts.verbose_name_plural
            self.message_user(
                request,
                f"An action takes at most {self.max_action_rows:,} {plural} at once, and "
                f"{count:,} were selected: filter the list, or select fewer, and try again.",
                messages.ERROR,
            )
            return None  # Django goes back to the list, which shows the message
        return super().response_action(request, queryset)

    def annotate_results(self, request, rows):
        """Return the rows of a changelist page, with whatever their columns need."""
        return rows
