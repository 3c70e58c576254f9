"""The staff pages outside the admin: the databases overview (``/overview/``), and ``/``
leading to it. Wired in ``multids/urls.py`` with ``include("core.urls")``."""

from django.urls import path
from django.views.generic import RedirectView

from core import views

app_name = "core"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="core:overview"), name="home"),
    path("overview/", views.overview, name="overview"),
]
