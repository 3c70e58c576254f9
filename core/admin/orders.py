"""The order admin: each order with its user from users_db and its product from products_db,
fetched once per page and linked to their own admin pages."""

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from core.admin.base import MultiDBModelAdmin, NextIdMixin, may, parse_id, searchable
from core.admin.filters import ProductIdFilter, QuantityFilter, UserIdFilter
from core.admin.forms import OrderForm
from core.models import Order, Product, User
from core.routers import database_for


def attach_parents(orders):
    """Set ``order.user`` and ``order.product`` for a page of orders; return the orders.

    One query on users_db and one on products_db, whatever the number of orders: the
    ``Order.user`` and ``Order.product`` accessors would cost one query each per row.
    """
    orders = list(orders)
    users = User.objects.using(database_for(User)).in_bulk({o.user_id for o in orders})
    products = Product.objects.using(database_for(Product)).in_bulk({o.product_id for o in orders})
    for order in orders:
        # Both are cached_property: filling __dict__ is what a first access would do.
        order.__dict__["user"] = users.get(order.user_id)
        order.__dict__["product"] = products.get(order.product_id)
    return orders


class OrderChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        self.result_list = attach_parents(self.result_list)
        # Link a parent only for those who may open its page (Django does the same).
        site = self.model_admin.admin_site.name
        for kind, model in (("user", User), ("product", Product)):
            if not (may(request, "view", model) or may(request, "change", model)):
                continue
            name = f"admin:{model._meta.app_label}_{model._meta.model_name}_change"
            for order in self.result_list:
                if getattr(order, kind) is not None:
                    pk = getattr(order, f"{kind}_id")
                    order.__dict__[f"{kind}_url"] = reverse(name, args=[pk], current_app=site)


@admin.register(Order)
class OrderAdmin(NextIdMixin, MultiDBModelAdmin):
    form = OrderForm
    list_display = (
        "id",
        "user_name",
        "user_email",
        "product_name",
        "product_price",
        "quantity",
    )
    search_fields = ("id",)  # shows the search box; get_search_results does the work
    search_help_text = "Search orders by order, user or product id, or by the user's email."
    list_filter = (QuantityFilter, UserIdFilter, ProductIdFilter)
    ordering = ("-id",)
    # The columns orders_db can sort: the user and product columns sort by their ids, which
    # they show first; names, emails and prices live in other databases.
    sortable_by = ("id", "user_name", "product_name", "quantity")
    fields = ("id", "user_id", "user_details", "product_id", "product_details", "quantity")
    readonly_fields = ("user_details", "product_details")
    # Counting a million orders twice per page (filtered and unfiltered) is wasted work.
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return OrderChangeList

    def get_search_results(self, request, queryset, search_term):
        """Match ids (ASCII digits) against the three ids, anything else against user emails.

        An email is looked up in users_db first (one query), then its orders by user_id:
        the two tables cannot be joined. A number beyond the id range matches nothing.
        """
        terms = searchable(search_term).split()
        if not terms:
            return queryset, False
        conditions = Q(pk__in=[])
        for term in terms:
            n = parse_id(term)
            if n is not None:
                conditions |= Q(pk=n) | Q(user_id=n) | Q(product_id=n)
            elif not term.isdigit():
                users = User.objects.using(database_for(User)).filter(email__iexact=term)
                conditions |= Q(user_id__in=list(users.values_list("pk", flat=True)[:1000]))
        return queryset.filter(conditions), False

    @staticmethod
    def _missing(kind, pk):
        return format_html('<strong class="errornote">{} {} not found</strong>', kind, pk)

    @staticmethod
    def _linked(order, kind, pk, name):
        """Show "#7 Ann", linked to its admin page when the account may open that page."""
        url = order.__dict__.get(f"{kind}_url")
        if url:
            return format_html('<a href="{}">#{} {}</a>', url, pk, name)
        return format_html("#{} {}", pk, name)

    @admin.display(description="user", ordering="user_id")
    def user_name(self, order):
        if order.user is None:
            return self._missing("user", order.user_id)
        return self._linked(order, "user", order.user_id, order.user.name)

    @admin.display(description="email")
    def user_email(self, order):
        return order.user.email if order.user else "-"

    @admin.display(description="product", ordering="product_id")
    def product_name(self, order):
        if order.product is None:
            return self._missing("product", order.product_id)
        return self._linked(order, "product", order.product_id, order.product.name)

    @admin.display(description="price")
    def product_price(self, order):
        return order.product.price if order.product else "-"

    @admin.display(description="user (users_db)")
    def user_details(self, order):
        if order.pk is None or order.user_id is None:
            return "-"
        user = order.user
        return f"{user.name} <{user.email}>" if user else f"user {order.user_id} not found"

    @admin.display(description="product (products_db)")
    def product_details(self, order):
        if order.pk is None or order.product_id is None:
            return "-"
        product = order.product
        return (
            f"{product.name}, {product.price}"
            if product
            else f"product {order.product_id} not found"
        )
