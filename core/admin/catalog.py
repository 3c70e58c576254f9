"""The customer and product admins: the generic parent admin (``crossdb.admin.parents``) with
each list's own search and filters. Their child-count columns, delete pages and delete
actions all come from the references other tables declare to them."""

from crossdb.admin.parents import ParentAdmin
from django.contrib import admin

from core.admin.filters import EmailDomainFilter, PriceFilter
from core.models import Product, User


@admin.register(User)
class UserAdmin(ParentAdmin):
    list_display_links = ("id", "name")
    search_fields = ("name", "email")
    search_help_text = "Search customers by name or email."
    list_filter = (EmailDomainFilter,)
    ordering = ("id",)


@admin.register(Product)
class ProductAdmin(ParentAdmin):
    list_display_links = ("id", "name")
    search_fields = ("name",)
    search_help_text = "Search products by name."
    list_filter = (PriceFilter,)
    ordering = ("id",)
