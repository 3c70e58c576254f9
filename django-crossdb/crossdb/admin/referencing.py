"""The admin of any table that holds declared references (orders, reviews, ...).

Everything comes from the references (``crossdb.registry``), so a new table that references
users needs only ``admin.site.register(Model, ReferencingAdmin)``:

* a list column per reference, showing the parent's ``str`` ("#7 Ann <ann@example.com>")
  linked to the parent's admin page, or a warning when the parent is missing; the parents
  of a page are read with one query per parent table, however many rows and references the
  page has;
* a read-only field per reference on the form, naming the parent as its database has it;
* a list filter per reference (``?user_id=7``: the children of one parent), which is what
  the delete page of a parent links to;
* a search box matching ids against the row's id and every reference, and any other term
  against the parents' unique keys (an order is found by its user's email);
* a parent's text (column, read-only field, search by its keys) only for an account that
  may view the parent model: to any other, a reference is its id alone ("#7"), whether or
  not the parent exists, so "change order" does not show every customer's name and email.
  The form still refuses a reference to a missing parent (that is its job), so such an
  account learns whether the id it types exists, and nothing else about it;
* the form checks every reference (``ValidatedForm``), and if the guard still refuses the
  save (``crossdb.guard.MissingParent``: the parent was deleted between the form's check and
  the save), the form is shown again with the guard's words and nothing is stored.
"""

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html

from crossdb import causal, registry
from crossdb.admin.base import TableAdmin, admin_url, may_view, parse_key, searchable
from crossdb.admin.filters import reference_filter
from crossdb.guard import MissingParent

if TYPE_CHECKING:
    from crossdb.registry import Reference

MAX_PARENTS_PER_TERM = 1000  # parents a search term may match through a unique key


def column_name(reference):
    """The list column of a reference: ``user`` for ``user_id``, ``member_parent`` for a
    reference named ``member`` (a column named as the model's field would show the bare
    key: Django's changelist takes the field before an admin attribute of that name)."""
    name = reference.field.removesuffix("_id")
    return name if name != reference.field else f"{name}_parent"


def attach_parents(rows, table_spec, references=None):
    """Set ``row.parents = {reference field: parent or None}``; return the rows.

    One query per parent table, whatever the number of rows and of references to that
    table: reading each parent on its own would cost one query per row and reference.
    ``references`` limits the lookups to some of the table's references (default: all).
    """
    rows = list(rows)
    for row in rows:
        row.parents = {}
    by_parent: dict[str, list[Reference]] = {}
    for reference in table_spec.references if references is None else references:
        by_parent.setdefault(reference.parent, []).append(reference)
    for parent_table, references in by_parent.items():
        parent = registry.spec(parent_table)
        ids = {getattr(row, r.field) for row in rows for r in references} - {None}
        # Replicas: where the rows just read depend on is replayed (crossdb.causal).
        where = causal.for_parents(parent.alias)
        found = parent.model.objects.using(where).in_bulk(list(ids)) if ids else {}
        for row in rows:
            for reference in references:
                row.parents[reference.field] = found.get(getattr(row, reference.field))
    return rows


class ReferencingAdmin(TableAdmin):
    """The admin of a table with references: columns, links, filters, search and the save
    refused by the guard, all from the declarations."""

    search_fields = ("id",)  # shows the search box; get_search_results does the work

    def __init__(self, model, admin_site):
        super().__init__(model, admin_site)
        self.generated_help = self.search_help_text is None
        if self.generated_help:
            # A ClassVar to django-stubs; Django reads it off the instance, set per table here.
            self.search_help_text = self.default_search_help_text()  # type: ignore[misc]

    def default_search_help_text(self, references=None):
        """ "Search reviews by id, by user or product id, or by the user's email"; the keys
        named are those of ``references`` (default: every reference's parent)."""
        nouns = " or ".join(dict.fromkeys(r.noun for r in self.spec.references))
        text = f"Search {self.opts.verbose_name_plural} by id, by {nouns} id"
        keyed = [
            f"the {r.noun}'s {key.source}"
            for r in (self.spec.references if references is None else references)
            for key in registry.spec(r.parent).keys
        ]
        return text + (f", or by {' or '.join(keyed)}." if keyed else ".")

    def visible_references(self, request):
        """The references whose parent this account may view (their text, their keys)."""
        return [r for r in self.spec.references if may_view(request, registry.spec(r.parent).model)]

    def get_changelist_instance(self, request):
        """The list, its search help naming only the keys this account may search by."""
        changelist = super().get_changelist_instance(request)
        if self.generated_help:
            changelist.search_help_text = self.default_search_help_text(
                self.visible_references(request)
            )
        return changelist

    def generated_attributes(self):
        attributes = dict(super().generated_attributes())
        for reference in self.spec.references:
            attributes[column_name(reference)] = self._column(reference)
            attributes[f"{column_name(reference)}_details"] = self._details(reference)
        return attributes

    def column_for(self, field):
        reference = self._reference(field)
        return column_name(reference) if reference else super().column_for(field)

    def _reference(self, field):
        return next((r for r in self.spec.references if r.field == field), None)

    def _column(self, reference):
        @admin.display(description=reference.noun, ordering=reference.field)
        def column(row):
            pk = getattr(row, reference.field)
            if reference.field not in row.parents:  # this account may not view the parent
                return f"#{pk}"
            parent = row.parents[reference.field]
            if parent is None:
                return format_html(
                    '<strong class="errornote">{} {} not found</strong>', reference.noun, pk
                )
            url = row.parent_urls.get(reference.field)
            if url:
                return format_html('<a href="{}">#{} {}</a>', url, pk, parent)
            return format_html("#{} {}", pk, parent)

        return column

    def _details(self, reference):
        parent_spec = registry.spec(reference.parent)

        @admin.display(description=f"{reference.noun} ({parent_spec.alias})")
        def details(row):
            pk = getattr(row, reference.field, None)
            if row.pk is None or pk is None:
                return "-"
            parent = parent_spec.model.objects.using(parent_spec.alias).filter(pk=pk).first()
            return str(parent) if parent else f"{reference.noun} {pk} not found"

        return details

    def annotate_results(self, request, rows):
        visible = self.visible_references(request)
        rows = attach_parents(super().annotate_results(request, rows), self.spec, visible)
        for row in rows:
            row.parent_urls = {}
        for reference in visible:
            model = registry.spec(reference.parent).model
            if admin_url(request, self.admin_site, model, "changelist") is None:
                continue  # not registered, or this account may not open it
            for row in rows:
                if row.parents.get(reference.field) is not None:
                    pk = getattr(row, reference.field)
                    row.parent_urls[reference.field] = admin_url(
                        request, self.admin_site, model, "change", pk
                    )
        return rows

    def get_list_filter(self, request):
        own = tuple(super().get_list_filter(request))
        taken = {getattr(f, "parameter_name", None) for f in own}
        return own + tuple(
            reference_filter(r) for r in self.spec.references if r.field not in taken
        )

    def get_fields(self, request, obj=None):
        """The table's fields, each reference followed by its parent's details for an
        account that may view the parent."""
        if self.fields:
            return self.fields
        visible = self.visible_references(request)
        fields = []
        for field in self.spec.fields:
            fields.append(field)
            reference = self._reference(field)
            if reference in visible:
                fields.append(f"{column_name(reference)}_details")
        return fields

    def get_readonly_fields(self, request, obj=None):
        details = tuple(f"{column_name(r)}_details" for r in self.visible_references(request))
        return tuple(super().get_readonly_fields(request, obj)) + details

    def get_search_results(self, request, queryset, search_term):
        """Match ids (ASCII digits) against the row's id and every reference; other terms
        against the unique keys of the parents this account may view (one query per parent
        table and term).

        The tables cannot be joined across databases, so a parent is looked up first, then
        its children by reference id. A number beyond the id range matches nothing.
        """
        terms = searchable(search_term).split()
        if not terms:
            return queryset, False
        keyed = self.visible_references(request)
        conditions = Q(pk__in=[])
        meta = self.model._meta
        for term in terms:
            pk = parse_key(meta.pk, term)
            if pk is not None:
                conditions |= Q(pk=pk)
            for reference in self.spec.references:
                named = parse_key(meta.get_field(reference.field).target_field, term)
                if named is not None:
                    conditions |= Q(**{reference.field: named})
            if not term.isdigit():
                for reference in keyed:
                    conditions |= Q(
                        **{f"{reference.field}__in": self._parents_keyed(reference, term)}
                    )
        return queryset.filter(conditions), False

    @staticmethod
    def _parents_keyed(reference, term):
        parent = registry.spec(reference.parent)
        ids: set[Any] = set()
        for key in parent.keys:
            ids.update(
                parent.model.objects.using(parent.alias)
                .filter(**{key.column: key.normalize(term)})
                .values_list("pk", flat=True)[:MAX_PARENTS_PER_TERM]
            )
        return sorted(ids)

    # --- The save the guard refuses ----------------------------------------------------

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """Show the form again, with the guard's reason, when the guard refuses the save.

        The form checked the parents, but one may be deleted before the save commits; the
        guard then raises MissingParent inside the save's transaction, which is rolled
        back. The view runs once more with the refusal as a form error, so the account sees
        its input and why, instead of a 500 (a wait past the guard's bound is the 503 page
        of ``crossdb.admin.base``).
        """
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except MissingParent as exc:
            if request.method != "POST":
                raise
            request.multids_save_refused = f"Not saved: {exc}"
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        refused = getattr(request, "multids_save_refused", None)
        if refused:
            form = type(form.__name__, (form,), {"refused": refused})
        return form
