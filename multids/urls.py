"""URLs: the admin for users, products and orders, and the staff overview (crossdb.urls).

Every page needs a staff login; ``/`` leads to the overview, which sends anyone not
logged in to the admin login page.
"""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("crossdb.urls")),
]
