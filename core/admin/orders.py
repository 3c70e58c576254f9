"""The order admin: the generic referencing admin (``crossdb.admin.referencing``) with the order
list's own filter and sorting. Its user and product columns, links, filters, form checks,
search by the user's email and the search help all come from the declared references."""

from crossdb.admin.referencing import ReferencingAdmin
from django.contrib import admin

from core.admin.filters import QuantityFilter
from core.models import Order


@admin.register(Order)
class OrderAdmin(ReferencingAdmin):
    list_filter = (QuantityFilter,)  # and one filter per reference: ?user_id=, ?product_id=
    ordering = ("-id",)
    # Counting a million orders twice per page (filtered and unfiltered) is wasted work.
    show_full_result_count = False
