"""The order admin: the generic referencing admin (``core.admin.referencing``) with the order
list's own filter, search text and sorting. Its user and product columns, links, filters,
form checks and search by the user's email all come from the declared references."""

from django.contrib import admin

from core.admin.filters import QuantityFilter
from core.admin.referencing import ReferencingAdmin
from core.models import Order


@admin.register(Order)
class OrderAdmin(ReferencingAdmin):
    search_help_text = "Search orders by order, user or product id, or by the user's email."
    list_filter = (QuantityFilter,)  # and one filter per reference: ?user_id=, ?product_id=
    ordering = ("-id",)
    # Counting a million orders twice per page (filtered and unfiltered) is wasted work.
    show_full_result_count = False
