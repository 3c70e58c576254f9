"""The staff pages outside the admin: the databases overview (``/overview/``), ``/``
leading to it, and the pages of loading from the admin (``/imports/``). Wired in
``multids/urls.py`` with ``include("crossdb.urls")``."""

from django.urls import path
from django.views.generic import RedirectView

from crossdb import views
from crossdb.admin import imports

app_name = "crossdb"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="crossdb:overview"), name="home"),
    path("overview/", views.overview, name="overview"),
    # Loading from the admin (crossdb.admin.imports); one table's page is in its admin.
    path("imports/new/", imports.zip_import, name="import-zip"),
    path("imports/<str:token>/", imports.preview, name="import-preview"),
    path("imports/<str:token>/status/", imports.status, name="import-status"),
    path("imports/<str:token>/rejects.csv", imports.rejects, name="import-rejects"),
]
