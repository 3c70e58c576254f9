"""The admin of any table other tables reference (users, products, ...): counts and deletes.

Everything comes from the references to the table (``spec.children``), so a new child table
needs no change here:

* a list column per child table with the row's number of children (one query per child
  table and page), linked to that child's list filtered by the reference;
* every delete goes through ``crossdb.deletion.delete``. Deleting a row that has children opens
  one page listing each child table's count (linked to those rows), what a delete does to
  them (``CASCADE``: deleted with it; ``PROTECT``: kept, so the delete needs the explicit
  choice) and the choices "delete it with its children" and "keep it". A row whose only
  children are ``CASCADE`` ones may be deleted with the plain delete;
* deleting child rows, by cascade or by choice, needs delete permission on each child model
  whose rows go (Django's own delete asks the same); without it the choice is not offered
  and a forced POST gets 403. Every deleted row gets its admin log entry (one summary entry
  per child table when a cascade deletes more than ``LOG_EACH_MAX`` of its rows).
"""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import csrf_protect_m
from django.contrib.admin.utils import unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from crossdb import deletion, registry
from crossdb.admin.base import TableAdmin, admin_url, may
from crossdb.fields import CASCADE
from crossdb.guard import CommitOrderError, GuardTimeout

PARENT_ACTIONS_TEMPLATE = "admin/crossdb/delete_parents.html"
PARENT_DELETE_TEMPLATE = "admin/crossdb/delete_parent.html"
LOG_EACH_MAX = 100  # a cascade logs each child row up to this many per table, else a summary
SAFE_ACTION = "delete_selected_safely"
CASCADE_ACTION = "delete_selected_with_children"


def counted(n, model):
    """ "1 order", "2,000 orders": a count with the model's own noun."""
    opts = model._meta
    return f"{n:,} {opts.verbose_name if n == 1 else opts.verbose_name_plural}"


def listed(words):
    """ "a", "a and b", "a, b and c"."""
    words = [str(w) for w in words]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


class ParentAdmin(TableAdmin):
    """The admin of a table with children; every delete goes through ``crossdb.deletion``."""

    actions = [SAFE_ACTION, CASCADE_ACTION]

    # --- What the declarations say -----------------------------------------------------

    def child_tables(self):
        """The tables holding references to this one, each once, in declaration order."""
        return tuple(dict.fromkeys(r.child for r in self.spec.children))

    def child_model(self, child):
        return registry.spec(child).model

    def cascading(self, child):
        """Whether a plain delete of a parent deletes this child table's rows too."""
        return all(r.on_delete == CASCADE for r in self.spec.children if r.child == child)

    def counts_of(self, pks):
        """{pk: {child table: count}} for the given parents, one query per reference."""
        counts: dict[Any, dict[str, int]] = {pk: {} for pk in pks}
        for (child, pk), n in deletion.count_children(self.spec.name, list(pks)).items():
            counts.setdefault(pk, {})[child] = n
        return counts

    def deleted_with(self, counts, with_children):
        """The child tables whose rows a delete of a parent with these counts removes."""
        return [
            c for c in self.child_tables() if counts.get(c) and (with_children or self.cascading(c))
        ]

    def protected(self, counts):
        """The child tables whose rows keep a plain delete from happening."""
        return [c for c in self.child_tables() if counts.get(c) and not self.cascading(c)]

    def may_delete_rows_of(self, request, children):
        return all(may(request, "delete", self.child_model(c)) for c in children)

    def has_delete_with_children_permission(self, request, obj=None):
        """Deleting with the children may delete rows of every child model: every permission."""
        return self.has_delete_permission(request, obj) and self.may_delete_rows_of(
            request, self.child_tables()
        )

    def children_words(self, children=None):
        children = self.child_tables() if children is None else children
        return listed(self.child_model(c)._meta.verbose_name_plural for c in children)

    def children_url(self, request, child, pk):
        """The child's list filtered to the children of parent pk (None if it would be a
        403), through the reference's list filter."""
        url = admin_url(request, self.admin_site, self.child_model(child), "changelist")
        # A table naming this one in two columns would link by the first (its count adds both).
        field = next(r.field for r in self.spec.children if r.child == child)
        return f"{url}?{field}={pk}" if url else None

    # --- The list ----------------------------------------------------------------------

    def generated_attributes(self):
        attributes = dict(super().generated_attributes())
        for child in self.child_tables():
            attributes[f"{child}_count"] = self._count_column(child)
        return attributes

    def trailing_columns(self):
        return (*super().trailing_columns(), *(f"{c}_count" for c in self.child_tables()))

    def _count_column(self, child):
        @admin.display(description=self.child_model(child)._meta.verbose_name_plural)
        def count(row):
            n = row.child_counts.get(child, 0)
            url = row.children_urls.get(child)
            return format_html('<a href="{}">{}</a>', url, f"{n:,}") if n and url else f"{n:,}"

        return count

    def annotate_results(self, request, rows):
        rows = super().annotate_results(request, rows)
        counts = self.counts_of([r.pk for r in rows])
        for row in rows:
            row.child_counts = counts.get(row.pk, {})
            row.children_urls = {
                c: self.children_url(request, c, row.pk) for c in self.child_tables()
            }
        return rows

    def get_actions(self, request):
        """Drop Django's delete_selected (it would delete parents without their children)
        and name the child tables in the two actions' descriptions."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        for name in (SAFE_ACTION, CASCADE_ACTION):
            if (action := actions.get(name)) is not None:
                actions[name] = (action[0], name, self.action_description(name))
        return actions

    def action_description(self, name):
        """ "Delete selected customers with their reviews (kept if they have orders)"."""
        plural = self.opts.verbose_name_plural
        if name == CASCADE_ACTION:
            return f"Delete selected {plural} with their {self.children_words()}"
        protected = [c for c in self.child_tables() if not self.cascading(c)]
        cascading = [c for c in self.child_tables() if self.cascading(c)]
        description = f"Delete selected {plural}"
        if cascading:
            description += f" with their {self.children_words(cascading)}"
        if protected:
            description += f" (kept if they have {self.children_words(protected)})"
        return description

    @csrf_protect_m
    def changelist_view(self, request, extra_context=None):
        """Refuse (403) a POSTed action this user is not offered, instead of ignoring it."""
        action = request.POST.get("action") if request.method == "POST" else None
        if action in self.actions and action not in self.get_actions(request):
            raise PermissionDenied(f"{action} is not permitted for this account")
        return super().changelist_view(request, extra_context)

    # --- Deleting ------------------------------------------------------------------------

    def delete_model(self, request, obj):
        deletion.delete(self.spec.name, [obj.pk])

    def delete_queryset(self, request, queryset):
        deletion.delete(self.spec.name, list(queryset.values_list("pk", flat=True)))

    def change_url(self, obj):
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[obj.pk],
            current_app=self.admin_site.name,
        )

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        """Delete one row through ``crossdb.deletion``, or show its children and the choices.

        Without children this is Django's confirmation page. With children, one page lists
        each child table's count and offers "delete it with its children" (only to who may
        delete every child model whose rows would go) and "keep it"; a row whose children
        are all CASCADE ones may be deleted with the plain delete. Django would run the
        deletion inside one transaction on this model's database; ``crossdb.deletion`` commits
        the children first.
        """
        obj = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_delete_permission(request, obj):
            return super().delete_view(request, object_id, extra_context)
        with_children = request.method == "POST" and request.POST.get("with_children") == "yes"
        counts = self.counts_of([obj.pk])[obj.pk]
        if request.method != "POST":
            if not counts:
                return super().delete_view(request, object_id, extra_context)
            return self.choose_delete(request, obj, counts)
        going = self.deleted_with(counts, with_children)
        if not self.may_delete_rows_of(request, going):
            raise PermissionDenied(
                f"deleting {self.children_words(going)} needs delete permission on each of them"
            )
        obj_display = str(obj)
        deleted, children, refused = self.delete_parents_logged(
            request, [obj], with_children=with_children
        )
        for refusal in refused:
            if isinstance(refusal, str):  # not its children: a wait that gave up
                self.message_user(request, refusal, messages.ERROR)
                return HttpResponseRedirect(self.change_url(obj))
        if refused:  # it has children a plain delete keeps (some may be new since the page)
            return self.choose_delete(request, obj, self.counts_of([obj.pk])[obj.pk])
        if not deleted:  # deleted by someone else meanwhile
            return super().delete_view(request, object_id, extra_context)
        if children:
            words = listed(counted(n, self.child_model(c)) for c, n in children.items())
            verb = "was" if sum(children.values()) == 1 else "were"
            self.message_user(request, f"Its {words} {verb} deleted first.", messages.SUCCESS)
        return self.response_delete(request, obj_display, obj.pk)

    def child_rows(self, request, pk, counts):
        """What the delete page says of each child table: count, link, fate, permission."""
        going = set(self.deleted_with(counts, True))
        return [
            {
                "table": c,
                "words": counted(counts[c], self.child_model(c)),
                "alias": registry.alias(c),
                "url": self.children_url(request, c, pk),
                "cascade": self.cascading(c),
                "may_delete": c not in going or may(request, "delete", self.child_model(c)),
            }
            for c in self.child_tables()
            if counts.get(c)
        ]

    def choose_delete(self, request, obj, counts):
        """The page for a row that has children: each table's count, a link, the choices."""
        protected = self.protected(counts)
        total = listed(
            counted(counts[c], self.child_model(c)) for c in self.child_tables() if counts.get(c)
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"{str(self.opts.verbose_name).capitalize()} {obj.pk} has {total}",
            "opts": self.opts,
            "object": obj,
            "children": self.child_rows(request, obj.pk, counts),
            "total": total,
            "protected": protected,
            "protected_words": self.children_words(protected) if protected else "",
            # One button: with_children=yes when a PROTECT table has rows, else the plain
            # delete (CASCADE children go with it); either needs delete permission on
            # every child model whose rows would go.
            "may_delete": self.may_delete_rows_of(
                request, self.deleted_with(counts, bool(protected))
            ),
            "change_url": self.change_url(obj),
        }
        return TemplateResponse(request, PARENT_DELETE_TEMPLATE, context)

    def delete_parents_logged(self, request, parents, *, with_children):
        """Delete each parent through ``crossdb.deletion`` and log every row deleted.

        Returns (parents deleted, {child table: rows deleted}, refusals), where a refusal is
        a ``HasChildren`` or the message of a permission this account lacks.
        """
        deleted, refused = [], []
        children_deleted: dict[str, int] = {}
        counts = self.counts_of([p.pk for p in parents])
        for parent in parents:
            going = self.deleted_with(counts.get(parent.pk, {}), with_children)
            lacking = [c for c in going if not may(request, "delete", self.child_model(c))]
            if lacking:
                refused.append(self.lacking_permission(parent, counts[parent.pk], lacking))
                continue
            # The children as they are now, to log each; a load may add more meanwhile.
            before = {c: self.children_of(c, parent.pk) for c in going}
            try:
                result = deletion.delete(self.spec.name, [parent.pk], with_children=with_children)
            except deletion.HasChildren as exc:
                refused.append(exc)
                continue
            except (GuardTimeout, CommitOrderError) as exc:  # waited its bound: say so
                refused.append(
                    f"{str(self.opts.verbose_name).capitalize()} {parent.pk} was not deleted: {exc}"
                )
                continue
            if not result.parents:
                continue
            self.log_deletions(request, [parent])  # type: ignore[arg-type]  # Django iterates it
            for child, n in result.children.items():
                if n:
                    self.log_children_deleted(request, parent, child, before.get(child, []), n)
                    children_deleted[child] = children_deleted.get(child, 0) + n
            deleted.append(parent)
        return deleted, children_deleted, refused

    def children_of(self, child, pk):
        """Up to LOG_EACH_MAX + 1 children of parent pk in one child table."""
        child_spec = registry.spec(child)
        rows = []
        for reference in self.spec.children:
            if reference.child == child:
                rows += list(
                    child_spec.model.objects.using(child_spec.alias)
                    .filter(**{reference.field: pk})
                    .order_by("pk")[: LOG_EACH_MAX + 1]
                )
        return rows

    def log_children_deleted(self, request, parent, child, before, count):
        """One log entry per child row when all are known and few, else one summary entry."""
        model = self.child_model(child)
        reason = f"Deleted with {self.opts.verbose_name} {parent.pk}"
        if count == len(before) <= LOG_EACH_MAX:
            LogEntry.objects.log_actions(request.user.pk, before, DELETION, reason)
            return
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type=ContentType.objects.get_for_model(model),
            object_id=None,
            object_repr=f"{counted(count, model)} of {self.opts.verbose_name} {parent.pk}"[:200],
            action_flag=DELETION,
            change_message=reason,
        )

    @admin.action(description="Delete selected %(verbose_name_plural)s", permissions=["delete"])
    def delete_selected_safely(self, request, queryset):
        return self.delete_parents(request, queryset, with_children=False)

    @admin.action(
        description="Delete selected %(verbose_name_plural)s with their children",
        permissions=["delete_with_children"],
    )
    def delete_selected_with_children(self, request, queryset):
        return self.delete_parents(request, queryset, with_children=True)

    def delete_parents(self, request, queryset, *, with_children):
        """Ask for confirmation with the children's counts, then delete each parent."""
        if with_children and not self.has_delete_with_children_permission(request):
            raise PermissionDenied(
                f"deleting {self.children_words()} needs delete permission on each of them"
            )
        parents = list(queryset)
        counts = self.counts_of([p.pk for p in parents])
        if request.POST.get("post") != "yes":
            return self.confirm_delete(request, parents, counts, with_children)
        deleted, children, refused = self.delete_parents_logged(
            request, parents, with_children=with_children
        )
        if deleted:
            words = [counted(len(deleted), self.model)]
            words += [counted(n, self.child_model(c)) for c, n in children.items()]
            self.message_user(request, f"Deleted {listed(words)}.", messages.SUCCESS)
        for refusal in refused:
            self.message_user(request, self.refusal(refusal), messages.ERROR)
        return None

    def refusal(self, refusal):
        """Say why a row was not deleted, and how to delete it with its children."""
        if isinstance(refusal, str):
            return refusal
        kept = listed(
            f"{counted(n, self.child_model(c))} in {registry.alias(c)}"
            for (c, pk), n in refusal.counts.items()
            if pk == refusal.pk
        )
        cascade = self.action_description(CASCADE_ACTION)
        return (
            f"{str(self.opts.verbose_name).capitalize()} {refusal.pk} was not deleted: "
            f"it has {kept}. "
            f"To delete it with its children, open it and choose “Delete”, or select it in "
            f"this list and choose the action “{cascade}”."
        )

    def lacking_permission(self, parent, counts, lacking):
        words = listed(f"{counted(counts[c], self.child_model(c))}" for c in lacking)
        models = self.children_words(lacking)
        return (
            f"{str(self.opts.verbose_name).capitalize()} {parent.pk} was not deleted: its {words} "
            f"would go with it, and this account may not delete {models}."
        )

    def confirm_delete(self, request, parents, counts, with_children):
        action = CASCADE_ACTION if with_children else SAFE_ACTION
        noun = self.opts.verbose_name if len(parents) == 1 else self.opts.verbose_name_plural
        rows = []
        for parent in parents:
            own = counts.get(parent.pk, {})
            kept = not with_children and self.protected(own)
            rows.append(
                {
                    "parent": parent,
                    "children": [
                        (
                            counted(own[c], self.child_model(c)),
                            self.children_url(request, c, parent.pk),
                        )
                        for c in self.child_tables()
                        if own.get(c)
                    ],
                    "fate": f"kept: it has {self.children_words(kept)}"
                    if kept
                    else ("deleted with its children" if own else "deleted"),
                }
            )
        totals = {c: sum(own.get(c, 0) for own in counts.values()) for c in self.child_tables()}
        context = {
            **self.admin_site.each_context(request),
            "title": f"Delete {len(parents)} {noun}?",
            "opts": self.opts,
            "action": action,
            "with_children": with_children,
            "rows": rows,
            "totals": listed(
                f"{counted(n, self.child_model(c))} in {registry.alias(c)}"
                for c, n in totals.items()
                if n
            ),
            "protected_words": self.children_words(
                [c for c in self.child_tables() if not self.cascading(c)]
            ),
            "cascading_words": self.children_words(
                [c for c in self.child_tables() if self.cascading(c)]
            ),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, PARENT_ACTIONS_TEMPLATE, context)
