"""The review admin: the generic referencing admin, with no change to core. Its user and
product columns, links, filters, form checks and search come from the declarations."""

from crossdb.admin.referencing import ReferencingAdmin
from django.contrib import admin

from tests.reviews.models import Review

admin.site.register(Review, ReferencingAdmin)
