"""The staff pages outside the admin: the databases overview (``/overview/``), and ``/``
leading to it. Wired in ``multids/urls.py`` with ``include("crossdb.urls")``."""

from django.urls import path
from django.views.generic import RedirectView

from crossdb import views

app_name = "crossdb"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="crossdb:overview"), name="home"),
    path("overview/", views.overview, name="overview"),
]
