"""The admin, and crossdb's staff overview of the four databases at ``/``."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("crossdb.urls")),
]
