"""The user and product admins: every delete goes through ``core.integrity.delete_parent``.

A parent with orders gets one page with their count, a link to them and the two choices
(delete it with its orders, keep it). Deleting orders with it needs delete permission on
orders as well; without it the choice is not offered and a forced POST gets 403. Every row
deleted gets an admin log entry (one summary entry for the orders of a large cascade).
"""

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import csrf_protect_m
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse

from core import integrity, tables
from core.admin.base import MultiDBModelAdmin, NextIdMixin, may
from core.admin.filters import EmailDomainFilter, PriceFilter, ProductIdFilter, UserIdFilter
from core.admin.forms import ProductForm, UserForm
from core.models import Order, Product, User
from core.routers import database_for

PARENT_ACTIONS_TEMPLATE = "admin/core/delete_parents.html"
PARENT_DELETE_TEMPLATE = "admin/core/delete_parent.html"
LOG_EACH_MAX = 100  # cascades up to this many orders log each order; larger ones, a summary


class OrderCountChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        rows = list(self.result_list)
        counts = integrity.count_orders_for(self.model_admin.table, [r.pk for r in rows])
        for row in rows:
            row.order_count = counts.get(row.pk, 0)
        self.result_list = rows


class ParentAdmin(NextIdMixin, MultiDBModelAdmin):
    """A user or product admin whose every delete goes through ``delete_parent``."""

    table = None  # "users" or "products"
    orders_column = None  # the column of Order naming this table: the orders list's filter
    actions = ["delete_selected_safely", "delete_selected_with_orders"]

    def get_changelist(self, request, **kwargs):
        return OrderCountChangeList

    @admin.display(description="orders")
    def order_count(self, obj):
        return obj.order_count

    def get_actions(self, request):
        """Drop Django's delete_selected: it would delete parents without their orders."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_with_orders_permission(self, request, obj=None):
        """Deleting a parent with its orders deletes rows of both models: both permissions."""
        return self.has_delete_permission(request, obj) and may(request, "delete", Order)

    @csrf_protect_m
    def changelist_view(self, request, extra_context=None):
        """Refuse (403) a POSTed action this user is not offered, instead of ignoring it."""
        action = request.POST.get("action") if request.method == "POST" else None
        if action in self.actions and action not in self.get_actions(request):
            raise PermissionDenied(f"{action} is not permitted for this account")
        return super().changelist_view(request, extra_context)

    def delete_model(self, request, obj):
        integrity.delete_parent(self.table, obj.pk)

    def delete_queryset(self, request, queryset):
        for pk in queryset.values_list("pk", flat=True):
            integrity.delete_parent(self.table, pk)

    def orders_url(self, request, pk):
        """The order list filtered to the orders of parent pk (None if it would be a 403)."""
        if not (may(request, "view", Order) or may(request, "change", Order)):
            return None
        opts = Order._meta
        name = f"admin:{opts.app_label}_{opts.model_name}_changelist"
        return f"{reverse(name, current_app=self.admin_site.name)}?{self.orders_column}={pk}"

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        """Delete one user or product through ``delete_parent``, or offer the two choices.

        Without orders this is Django's confirmation page. With orders, one page says how
        many (with a link to them) and offers "delete it with its orders" (only to those who
        may delete orders) and "keep it". Django would run the deletion inside one
        transaction on this model's database; ``delete_parent`` commits the orders first.
        """
        obj = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_delete_permission(request, obj):
            return super().delete_view(request, object_id, extra_context)
        with_orders = request.method == "POST" and request.POST.get("with_orders") == "yes"
        if with_orders and not self.has_delete_with_orders_permission(request, obj):
            raise PermissionDenied("deleting orders needs delete permission on orders")
        if request.method != "POST":
            count = integrity.count_orders_for(self.table, [obj.pk]).get(obj.pk, 0)
            if not count:
                return super().delete_view(request, object_id, extra_context)
            return self.choose_delete(request, obj, count)
        obj_display = str(obj)
        _deleted, orders, refused = self.delete_parents_logged(
            request, [obj], with_orders=with_orders
        )
        if refused:  # it has orders (some may have arrived since the page was shown)
            return self.choose_delete(request, obj, refused[0].count)
        if orders:
            noun = "order was" if orders == 1 else "orders were"
            self.message_user(request, f"Its {orders:,} {noun} deleted first.", messages.SUCCESS)
        return self.response_delete(request, obj_display, obj.pk)

    def choose_delete(self, request, obj, count):
        """The page for a parent that has orders: their count, a link, the two choices."""
        context = {
            **self.admin_site.each_context(request),
            "title": f"{self.opts.verbose_name.capitalize()} {obj.pk} has {count:,} "
            f"order{'s' if count != 1 else ''}",
            "opts": self.opts,
            "object": obj,
            "count": count,
            "orders_url": self.orders_url(request, obj.pk),
            "orders_alias": tables.alias("orders"),
            "may_delete_orders": self.has_delete_with_orders_permission(request, obj),
            "change_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                args=[obj.pk],
                current_app=self.admin_site.name,
            ),
        }
        return TemplateResponse(request, PARENT_DELETE_TEMPLATE, context)

    def delete_parents_logged(self, request, parents, *, with_orders):
        """Delete each parent through delete_parent and log every row deleted.

        Returns (parents deleted, orders deleted, HasOrders refusals).
        """
        deleted, orders_deleted, refused = [], 0, []
        orders_alias = database_for(Order)
        for parent in parents:
            # The orders as they are now, to log each one; a load may add more meanwhile.
            before = []
            if with_orders:
                before = list(
                    Order.objects.using(orders_alias)
                    .filter(**{self.orders_column: parent.pk})
                    .order_by("pk")[: LOG_EACH_MAX + 1]
                )
            try:
                count, _ = integrity.delete_parent(self.table, parent.pk, with_orders=with_orders)
            except integrity.HasOrders as exc:
                refused.append(exc)
                continue
            self.log_deletions(request, [parent])
            self.log_orders_deleted(request, parent, before, count)
            orders_deleted += count
            deleted.append(parent)
        return deleted, orders_deleted, refused

    def log_orders_deleted(self, request, parent, before, count):
        """One log entry per order when all are known and few, else one summary entry."""
        if not count:
            return
        reason = f"Deleted with {self.opts.verbose_name} {parent.pk}"
        if count == len(before) <= LOG_EACH_MAX:
            LogEntry.objects.log_actions(request.user.pk, before, DELETION, reason)
            return
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type=ContentType.objects.get_for_model(Order),
            object_id=None,
            object_repr=f"{count:,} orders of {self.opts.verbose_name} {parent.pk}"[:200],
            action_flag=DELETION,
            change_message=reason,
        )

    @admin.action(
        description="Delete selected %(verbose_name_plural)s (refused for those with orders)",
        permissions=["delete"],
    )
    def delete_selected_safely(self, request, queryset):
        return self.delete_parents(request, queryset, with_orders=False)

    @admin.action(
        description="Delete selected %(verbose_name_plural)s with their orders",
        permissions=["delete_with_orders"],
    )
    def delete_selected_with_orders(self, request, queryset):
        return self.delete_parents(request, queryset, with_orders=True)

    def delete_parents(self, request, queryset, *, with_orders):
        """Ask for confirmation with the order counts, then delete each through delete_parent."""
        if with_orders and not self.has_delete_with_orders_permission(request):
            raise PermissionDenied("deleting orders needs delete permission on orders")
        parents = list(queryset)
        counts = integrity.count_orders_for(self.table, [p.pk for p in parents])
        if request.POST.get("post") != "yes":
            return self.confirm_delete(request, parents, counts, with_orders)
        deleted, orders_deleted, refused = self.delete_parents_logged(
            request, parents, with_orders=with_orders
        )
        if deleted:
            plural = self.opts.verbose_name if len(deleted) == 1 else self.opts.verbose_name_plural
            self.message_user(
                request,
                f"Deleted {len(deleted)} {plural} and {orders_deleted:,} "
                f"{'order' if orders_deleted == 1 else 'orders'}.",
                messages.SUCCESS,
            )
        for exc in refused:
            self.message_user(request, self.refusal(exc), messages.ERROR)
        return None

    def refusal(self, exc):
        """Say why a user or product was not deleted, and how to delete it with its orders."""
        noun = "order" if exc.count == 1 else "orders"
        return (
            f"{self.opts.verbose_name.capitalize()} {exc.pk} was not deleted: it has "
            f"{exc.count:,} {noun} in {tables.alias('orders')}. To delete it with its orders, "
            f"open it and choose “Delete”, or select it in this list and choose the action "
            f"“Delete selected {self.opts.verbose_name_plural} with their orders”."
        )

    def confirm_delete(self, request, parents, counts, with_orders):
        action = "delete_selected_with_orders" if with_orders else "delete_selected_safely"
        noun = self.opts.verbose_name if len(parents) == 1 else self.opts.verbose_name_plural
        context = {
            **self.admin_site.each_context(request),
            "title": f"Delete {len(parents)} {noun}?",
            "opts": self.opts,
            "action": action,
            "with_orders": with_orders,
            "rows": [(p, counts.get(p.pk, 0), self.orders_url(request, p.pk)) for p in parents],
            "orders_total": sum(counts.values()),
            "orders_alias": tables.alias("orders"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, PARENT_ACTIONS_TEMPLATE, context)


@admin.register(User)
class UserAdmin(ParentAdmin):
    table = "users"
    orders_column = UserIdFilter.parameter_name
    form = UserForm
    list_display = ("id", "name", "email", "order_count")
    list_display_links = ("id", "name")
    search_fields = ("name", "email")
    search_help_text = "Search users by name or email."
    list_filter = (EmailDomainFilter,)
    ordering = ("id",)
    sortable_by = ("id", "name", "email")


@admin.register(Product)
class ProductAdmin(ParentAdmin):
    table = "products"
    orders_column = ProductIdFilter.parameter_name
    form = ProductForm
    list_display = ("id", "name", "price", "order_count")
    list_display_links = ("id", "name")
    search_fields = ("name",)
    search_help_text = "Search products by name."
    list_filter = (PriceFilter,)
    ordering = ("id",)
    sortable_by = ("id", "name", "price")
