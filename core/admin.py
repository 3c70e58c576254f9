"""The admin for users, products and orders, each read from and written to its own database.

Every ModelAdmin here follows the multi-database pattern of Django's documentation
("Exposing multiple databases in Django's admin interface"): querysets, saves and deletes
name the alias that ``core.routers`` gives the model, so nothing falls back to ``default``.

Three things differ from a plain admin because the tables live in different databases:

* An order names its user and product by id only. The order list fetches the users and
  products of the page with one ``IN`` query per database (``attach_parents``), never one
  query per row; the user and product lists count their orders the same way.
* Forms have no rules of their own: every field arrives as raw text and goes through
  ``core.validation``, as a CSV cell does in ``insert_data`` (one set of rules, two doors).
  ``Order.clean()`` then checks that the user and product exist in their databases.
* Users and products are deleted only through ``core.integrity.delete_parent``: a user or
  product that still has orders is refused with a message naming the fix, and the explicit
  action "Delete selected ... with their orders" deletes the orders first.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import csrf_protect_m
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q
from django.db.models.functions import Length
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse, reverse_lazy
from django.utils.html import format_html

from core import integrity, tables, validation
from core.models import Order, Product, User
from core.routers import database_for

admin.site.site_header = "multids administration"
admin.site.site_title = "multids"
admin.site.index_title = "Users, products and orders in three databases"
# The "View site" link of every admin page leads to the databases overview.
admin.site.site_url = reverse_lazy("core:overview")

PARENT_ACTIONS_TEMPLATE = "admin/core/delete_parents.html"


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


class ValidatedForm(forms.ModelForm):
    """A ModelForm whose rules and messages all come from ``core.validation``.

    Django's form and model fields would check types first, in their own words, and the
    model's clean() would then repeat the same problem in ours. So every field is plain
    text here, the row is cleaned by the same function as a row of ``insert_data``, and
    the model step (``Order.clean()``'s existence checks, primary key uniqueness) runs only
    on a row that passed.
    """

    table = None  # "users", "products" or "orders"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, field in list(self.fields.items()):
            self.fields[name] = forms.CharField(
                label=field.label,
                help_text=field.help_text,
                required=False,  # "name is required" comes from core.validation
                strip=False,  # so does trimming
                widget=forms.TextInput(attrs={"class": "vTextField"}),
            )

    def clean(self):
        cleaned_data = super().clean()
        names = tables.fields(self.table)
        raw = tuple(
            cleaned_data.get(n) if n in self.fields else getattr(self.instance, n) for n in names
        )
        values, problems = validation.CLEANERS[self.table](raw)
        for problem in problems:
            self.add_error(problem.field if problem.field in self.fields else None, problem.message)
        for name, value in zip(names, values, strict=True):
            if name in cleaned_data and value is not None:
                cleaned_data[name] = value
        if not problems:
            self.check_other_rows(cleaned_data)
        return cleaned_data

    def check_other_rows(self, cleaned_data):
        """Add problems that need other rows of the database (none by default)."""

    def _post_clean(self):
        # The problems core.validation found are on the form already; Model.full_clean()
        # would report each again, in Django's words and then in ours.
        if not self._errors:
            super()._post_clean()


class UserForm(ValidatedForm):
    table = "users"

    def check_other_rows(self, cleaned_data):
        """Refuse an email another user has, in the words ``insert_data`` uses."""
        email = cleaned_data["email"]
        pk = cleaned_data.get("id", self.instance.pk)
        owner = (
            User.objects.using(database_for(User))
            .filter(email__iexact=email)
            .exclude(pk=pk)
            .values_list("pk", flat=True)
            .first()
        )
        if owner is not None:
            self.add_error(
                "email", f"email {validation.shown(email)} is already used by user {owner}"
            )


class ProductForm(ValidatedForm):
    table = "products"


class OrderForm(ValidatedForm):
    table = "orders"


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


class OrderCountChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        rows = list(self.result_list)
        counts = integrity.count_orders_for(self.model_admin.table, [r.pk for r in rows])
        for row in rows:
            row.order_count = counts.get(row.pk, 0)
        self.result_list = rows


def refusal(exc, verbose_name_plural):
    """Say why a user or product was not deleted, and how to delete it with its orders."""
    noun = "order" if exc.count == 1 else "orders"
    return (
        f"{exc.table.removesuffix('s').capitalize()} {exc.pk} was not deleted: it has "
        f"{exc.count} {noun} in {tables.alias('orders')}. To delete it with its orders, "
        f"select it in the list of {verbose_name_plural} and choose the action "
        f"“Delete selected {verbose_name_plural} with their orders”."
    )


class ParentAdmin(NextIdMixin, MultiDBModelAdmin):
    """A user or product admin whose every delete goes through ``delete_parent``."""

    table = None  # "users" or "products"
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

    def delete_model(self, request, obj):
        integrity.delete_parent(self.table, obj.pk)

    def delete_queryset(self, request, queryset):
        for pk in queryset.values_list("pk", flat=True):
            integrity.delete_parent(self.table, pk)

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        """Delete one user or product through ``delete_parent``, or say why it was refused.

        Django would run the deletion inside a transaction on this model's database and
        log it first; ``delete_parent`` opens the orders database first and commits each
        step itself, and a refused delete must leave no log entry.
        """
        obj = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_delete_permission(request, obj):
            return super().delete_view(request, object_id, extra_context)
        if request.method != "POST":
            count = integrity.count_orders_for(self.table, [obj.pk]).get(obj.pk, 0)
            if count:
                exc = integrity.HasOrders(self.table, obj.pk, count)
                self.message_user(
                    request, refusal(exc, self.opts.verbose_name_plural), messages.WARNING
                )
            return super().delete_view(request, object_id, extra_context)
        obj_display = str(obj)
        try:
            integrity.delete_parent(self.table, obj.pk)
        except integrity.HasOrders as exc:
            self.message_user(request, refusal(exc, self.opts.verbose_name_plural), messages.ERROR)
            return HttpResponseRedirect(
                reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                    args=[obj.pk],
                    current_app=self.admin_site.name,
                )
            )
        self.log_deletions(request, [obj])
        return self.response_delete(request, obj_display, obj.pk)

    @admin.action(
        description="Delete selected %(verbose_name_plural)s (refused for those with orders)",
        permissions=["delete"],
    )
    def delete_selected_safely(self, request, queryset):
        return self.delete_parents(request, queryset, with_orders=False)

    @admin.action(
        description="Delete selected %(verbose_name_plural)s with their orders",
        permissions=["delete"],
    )
    def delete_selected_with_orders(self, request, queryset):
        return self.delete_parents(request, queryset, with_orders=True)

    def delete_parents(self, request, queryset, *, with_orders):
        """Ask for confirmation with the order counts, then delete each through delete_parent."""
        parents = list(queryset)
        counts = integrity.count_orders_for(self.table, [p.pk for p in parents])
        if request.POST.get("post") != "yes":
            return self.confirm_delete(request, parents, counts, with_orders)
        deleted, orders_deleted, refused = [], 0, []
        for parent in parents:
            try:
                orders, _ = integrity.delete_parent(self.table, parent.pk, with_orders=with_orders)
            except integrity.HasOrders as exc:
                refused.append(exc)
                continue
            orders_deleted += orders
            deleted.append(parent)
        if deleted:
            self.log_deletions(request, deleted)
            plural = self.opts.verbose_name if len(deleted) == 1 else self.opts.verbose_name_plural
            self.message_user(
                request,
                f"Deleted {len(deleted)} {plural} and {orders_deleted} "
                f"{'order' if orders_deleted == 1 else 'orders'}.",
                messages.SUCCESS,
            )
        for exc in refused:
            self.message_user(request, refusal(exc, self.opts.verbose_name_plural), messages.ERROR)
        return None

    def confirm_delete(self, request, parents, counts, with_orders):
        action = "delete_selected_with_orders" if with_orders else "delete_selected_safely"
        context = {
            **self.admin_site.each_context(request),
            "title": "Are you sure?",
            "opts": self.opts,
            "action": action,
            "with_orders": with_orders,
            "rows": [(p, counts.get(p.pk, 0)) for p in parents],
            "orders_total": sum(counts.values()),
            "orders_alias": tables.alias("orders"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, PARENT_ACTIONS_TEMPLATE, context)


class EmailDomainFilter(admin.SimpleListFilter):
    title = "email domain"
    parameter_name = "domain"
    MOST_COMMON = 10

    def lookups(self, request, model_admin):
        """Offer the most common domains among the first 10,000 users.

        Counting every user's domain on each page would cost more than the filter is worth
        at a million users; any other domain still works as ``?domain=example.org``.
        """
        domains = {}
        for email in (
            model_admin.get_queryset(request).order_by().values_list("email", flat=True)[:10_000]
        ):
            domain = email.rpartition("@")[2].lower()
            domains[domain] = domains.get(domain, 0) + 1
        common = sorted(domains, key=lambda d: (-domains[d], d))[: self.MOST_COMMON]
        return [(d, d) for d in common]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(email__iendswith=f"@{self.value()}")
        return queryset


class NameLengthFilter(admin.SimpleListFilter):
    title = "name length"
    parameter_name = "name_length"

    def lookups(self, request, model_admin):
        return [("short", "up to 10 characters"), ("long", "more than 10 characters")]

    def queryset(self, request, queryset):
        if self.value() == "short":
            return queryset.alias(n=Length("name")).filter(n__lte=10)
        if self.value() == "long":
            return queryset.alias(n=Length("name")).filter(n__gt=10)
        return queryset


class RangeFilter(admin.SimpleListFilter):
    """Filter a numeric field by fixed brackets ``(label, low, high)``; high None is open."""

    field = None
    brackets = ()

    def lookups(self, request, model_admin):
        return [(str(i), label) for i, (label, _low, _high) in enumerate(self.brackets)]

    def queryset(self, request, queryset):
        if self.value() is None or not self.value().isdigit():
            return queryset
        index = int(self.value())
        if index >= len(self.brackets):
            return queryset
        _label, low, high = self.brackets[index]
        condition = Q(**{f"{self.field}__gte": low})
        if high is not None:
            condition &= Q(**{f"{self.field}__lt": high})
        return queryset.filter(condition)


class PriceFilter(RangeFilter):
    title = "price"
    parameter_name = "price"
    field = "price"
    brackets = (
        ("under 50", 0, 50),
        ("50 to 199.99", 50, 200),
        ("200 to 999.99", 200, 1000),
        ("1000 and more", 1000, None),
    )


class QuantityFilter(RangeFilter):
    title = "quantity"
    parameter_name = "quantity"
    field = "quantity"
    brackets = (("1", 1, 2), ("2 to 4", 2, 5), ("5 to 9", 5, 10), ("10 and more", 10, None))


@admin.register(User)
class UserAdmin(ParentAdmin):
    table = "users"
    form = UserForm
    list_display = ("id", "name", "email", "order_count")
    list_display_links = ("id", "name")
    search_fields = ("name", "email")
    search_help_text = "Search users by name or email."
    list_filter = (EmailDomainFilter, NameLengthFilter)
    ordering = ("id",)
    sortable_by = ("id", "name", "email")


@admin.register(Product)
class ProductAdmin(ParentAdmin):
    table = "products"
    form = ProductForm
    list_display = ("id", "name", "price", "order_count")
    list_display_links = ("id", "name")
    search_fields = ("name",)
    search_help_text = "Search products by name."
    list_filter = (PriceFilter,)
    ordering = ("id",)
    sortable_by = ("id", "name", "price")


class OrderChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        self.result_list = attach_parents(self.result_list)


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
    list_filter = (QuantityFilter,)
    ordering = ("-id",)
    sortable_by = ("id", "quantity")
    fields = ("id", "user_id", "user_details", "product_id", "product_details", "quantity")
    readonly_fields = ("user_details", "product_details")
    # Counting a million orders twice per page (filtered and unfiltered) is wasted work.
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return OrderChangeList

    def get_search_results(self, request, queryset, search_term):
        """Match whole numbers against the three ids, anything else against user emails.

        An email is looked up in users_db first (one query), then its orders by user_id:
        the two tables cannot be joined.
        """
        conditions = Q()
        for term in search_term.split():
            if term.isdigit():
                n = int(term)
                conditions |= Q(pk=n) | Q(user_id=n) | Q(product_id=n)
            else:
                users = User.objects.using(database_for(User)).filter(email__iexact=term)
                conditions |= Q(user_id__in=list(users.values_list("pk", flat=True)[:1000]))
        if not search_term.split():
            return queryset, False
        return queryset.filter(conditions), False

    @staticmethod
    def _missing(kind, pk):
        return format_html('<strong class="errornote">{} {} not found</strong>', kind, pk)

    @admin.display(description="user")
    def user_name(self, order):
        return order.user.name if order.user else self._missing("user", order.user_id)

    @admin.display(description="email")
    def user_email(self, order):
        return order.user.email if order.user else "-"

    @admin.display(description="product")
    def product_name(self, order):
        return order.product.name if order.product else self._missing("product", order.product_id)

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
