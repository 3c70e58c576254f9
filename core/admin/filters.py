"""The shop's own list filters: customers by email domain, products by price, orders by
quantity. Generic ones (a reference's, a range of numbers) are crossdb's
(``crossdb.admin.filters``)."""

from crossdb.admin.base import searchable
from crossdb.admin.filters import RangeFilter
from django.contrib import admin


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
