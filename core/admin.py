"""The admin for users, products and orders, each read from and written to its own database.

Every ModelAdmin here follows the multi-database pattern of Django's documentation
("Exposing multiple databases in Django's admin interface"): querysets, saves and deletes
name the alias that ``core.routers`` gives the model, so nothing falls back to ``default``.

Four things differ from a plain admin because the tables live in different databases:

* An order names its user and product by id only. The order list fetches the users and
  products of the page with one ``IN`` query per database (``attach_parents``), never one
  query per row, and links each to its own admin page; the user and product lists count
  their orders the same way.
* Forms have no rules of their own: every field arrives as raw text and goes through
  ``core.validation``, as a CSV cell does in ``insert_data`` (one set of rules, two doors).
  The existence of an order's user and product is checked in the same pass, so a form
  shows every problem at once.
* Users and products are deleted only through ``core.integrity.delete_parent``. Deleting
  one that still has orders opens one page (``delete_parent.html``) with their count, a
  link to them, and the two choices: delete it with its orders, or keep it. Deleting
  orders along with it needs delete permission on orders too; without it the choice is
  not offered and a forced POST gets 403. Every deleted row gets an admin log entry.
* The URL is input like any other: only the declared filters and the search box are
  accepted (``lookup_allowed``), ids are parsed by ``parse_id`` (ASCII digits within the
  id range), and search terms are bounded, so no query string can cost minutes of CPU
  (``email__regex=``) or end in a 500 (``q=²``, ``id__in=99999999999999999999``).
"""

import unicodedata

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import IncorrectLookupParameters, csrf_protect_m
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Q
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
PARENT_DELETE_TEMPLATE = "admin/core/delete_parent.html"
MAX_SEARCH_TERMS = 10  # each term is one more OR (or one more query on users_db)
LOG_EACH_MAX = 100  # cascades up to this many orders log each order; larger ones, a summary


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
        self.check_other_rows(cleaned_data, valid=set(names) - {p.field for p in problems})
        return cleaned_data

    def check_other_rows(self, cleaned_data, valid):
        """Add problems that need other rows of the database, for the fields in valid."""

    def _post_clean(self):
        # The problems core.validation found are on the form already; Model.full_clean()
        # would report each again, in Django's words and then in ours.
        if not self._errors:
            super()._post_clean()


class UserForm(ValidatedForm):
    table = "users"

    def check_other_rows(self, cleaned_data, valid):
        """Refuse an email another user has, in the words ``insert_data`` uses."""
        if "email" not in valid:
            return
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

    def check_other_rows(self, cleaned_data, valid):
        """Say which of the order's user and product do not exist, with its other problems."""
        user_id, product_id = cleaned_data.get("user_id"), cleaned_data.get("product_id")
        problems = validation.parent_problems(
            user_id,
            product_id,
            user_exists="user_id" not in valid or User.objects.filter(pk=user_id).exists(),
            product_exists="product_id" not in valid
            or Product.objects.filter(pk=product_id).exists(),
        )
        for problem in problems:
            self.add_error(problem.field, problem.message)


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

    def orders_url(self, pk):
        """The order list filtered to the orders of parent pk."""
        url = reverse("admin:core_order_changelist", current_app=self.admin_site.name)
        return f"{url}?{self.orders_column}={pk}"

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
        _deleted, _orders, refused = self.delete_parents_logged(
            request, [obj], with_orders=with_orders
        )
        if refused:  # it has orders (some may have arrived since the page was shown)
            return self.choose_delete(request, obj, refused[0].count)
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
            "orders_url": self.orders_url(obj.pk),
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
            "rows": [(p, counts.get(p.pk, 0), self.orders_url(p.pk)) for p in parents],
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
        domain = searchable(self.value() or "")
        if domain:
            return queryset.filter(email__iendswith=f"@{domain}")
        return queryset


class RangeFilter(admin.SimpleListFilter):
    """Filter a numeric field by fixed brackets ``(label, low, high)``; high None is open."""

    field = None
    brackets = ()

    def lookups(self, request, model_admin):
        return [(str(i), label) for i, (label, _low, _high) in enumerate(self.brackets)]

    def queryset(self, request, queryset):
        value = self.value()
        index = int(value) if value and value.isascii() and value.isdigit() else None
        if index is None or index >= len(self.brackets):
            return queryset
        _label, low, high = self.brackets[index]
        condition = Q(**{f"{self.field}__gte": low})
        if high is not None:
            condition &= Q(**{f"{self.field}__lt": high})
        return queryset.filter(condition)


class ParentIdFilter(admin.SimpleListFilter):
    """The orders of one user or product (``?user_id=7``), shown only while it is in use.

    The delete page of a user or product links here; the filter is how the URL may name
    that column at all, since ``lookup_allowed`` accepts no lookup of its own.
    """

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, f"{self.title} {value}")] if value else []

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        pk = parse_id(self.value())
        if pk is None:
            raise IncorrectLookupParameters(f"{self.parameter_name} must be an id")
        return queryset.filter(**{self.parameter_name: pk})


class UserIdFilter(ParentIdFilter):
    title = "user"
    parameter_name = "user_id"


class ProductIdFilter(ParentIdFilter):
    title = "product"
    parameter_name = "product_id"


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
        "user_id",
        "user_name",
        "user_email",
        "product_id",
        "product_name",
        "product_price",
        "quantity",
    )
    search_fields = ("id",)  # shows the search box; get_search_results does the work
    search_help_text = "Search orders by order, user or product id, or by the user's email."
    list_filter = (QuantityFilter, UserIdFilter, ProductIdFilter)
    ordering = ("-id",)
    # The columns orders_db can sort; names, emails and prices live in other databases.
    sortable_by = ("id", "user_id", "product_id", "quantity")
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
    def _linked(order, kind, text):
        url = order.__dict__.get(f"{kind}_url")
        return format_html('<a href="{}">{}</a>', url, text) if url else text

    @admin.display(description="user")
    def user_name(self, order):
        if order.user is None:
            return self._missing("user", order.user_id)
        return self._linked(order, "user", order.user.name)

    @admin.display(description="email")
    def user_email(self, order):
        return order.user.email if order.user else "-"

    @admin.display(description="product")
    def product_name(self, order):
        if order.product is None:
            return self._missing("product", order.product_id)
        return self._linked(order, "product", order.product.name)

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
