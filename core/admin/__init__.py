"""The admin of every registered table, each read from and written to its own database,
derived from the table registry (``crossdb.registry``) instead of written per table.

Every ModelAdmin here follows the multi-database pattern of Django's documentation
("Exposing multiple databases in Django's admin interface"): querysets, saves and deletes
name the alias that ``crossdb.routers`` gives the model, so nothing falls back to ``default``.

Two generic admins carry everything the declared references imply; a table's own admin is a
thin subclass that adds only its search and filters (``catalog``, ``orders``), and a new table
needs one ``register`` line (``tests/reviews/admin.py``):

* ``ReferencingAdmin`` (any table with references): a column per reference showing the
  parent's ``str`` linked to its admin page, the parents of a page read with one query per
  parent table; a filter per reference (``?user_id=7``); search by ids and the parents'
  unique keys; a save the guard refuses (``MissingParent``: the parent went between the
  form's check and the save) comes back as the form with the reason, nothing stored.
* ``ParentAdmin`` (any table others reference): a count column per child table; every
  delete goes through ``crossdb.deletion``. A row with children gets one page listing each
  child table's count with a link to those rows and the choices "delete it with its
  children" / "keep it"; ``CASCADE`` children go with a plain delete, ``PROTECT`` ones need
  the explicit choice. Deleting child rows needs delete permission on each child model whose
  rows go; without it the choice is not offered and a forced POST gets 403. Every deleted
  row gets an admin log entry.
* Forms have no rules of their own (``forms``): every field arrives as raw text and goes
  through the table's spec, as a CSV cell does in ``insert_data``; unique keys and
  references are checked in the same pass, so a form shows every problem at once.
* The URL is input like any other (``base``): only the declared filters and the search box
  are accepted (``lookup_allowed``), ids are parsed by ``parse_id`` (ASCII digits within the
  id range), and search terms are bounded, so no query string can cost minutes of CPU
  (``email__regex=``) or end in a 500 (``q=²``, ``id__in=99999999999999999999``).
"""

from django.contrib import admin
from django.urls import reverse_lazy

from core.admin import catalog, orders  # noqa: F401  (registers the three ModelAdmins)
from core.logins import ThrottledLoginForm

admin.site.site_header = "multids administration"
admin.site.site_title = "multids"
admin.site.index_title = "Each table in its own database"
# The "View site" link of every admin page leads to the databases overview.
admin.site.site_url = reverse_lazy("crossdb:overview")
# The login form says so when an account or address is throttled (core.logins).
admin.site.login_form = ThrottledLoginForm
