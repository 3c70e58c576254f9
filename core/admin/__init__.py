"""The admin for users, products and orders, each read from and written to its own database.

Every ModelAdmin here follows the multi-database pattern of Django's documentation
("Exposing multiple databases in Django's admin interface"): querysets, saves and deletes
name the alias that ``core.routers`` gives the model, so nothing falls back to ``default``.

Four things differ from a plain admin because the tables live in different databases:

* An order names its user and product by id only. The order list fetches the users and
  products of the page with one ``IN`` query per database (``attach_parents``), never one
  query per row, and links each to its own admin page; the user and product lists count
  their orders the same way.
* Forms have no rules of their own: every field arrives as raw text and goes through
  ``core.validation``, as a CSV cell does in ``insert_data`` (one set of rules, two doors).
  The existence of an order's user and product is checked in the same pass, so a form
  shows every problem at once.
* Users and products are deleted only through ``core.integrity.delete_parent``. Deleting
  one that still has orders opens one page (``delete_parent.html``) with their count, a
  link to them, and the two choices: delete it with its orders, or keep it. Deleting
  orders along with it needs delete permission on orders too; without it the choice is
  not offered and a forced POST gets 403. Every deleted row gets an admin log entry.
* The URL is input like any other: only the declared filters and the search box are
  accepted (``lookup_allowed``), ids are parsed by ``parse_id`` (ASCII digits within the
  id range), and search terms are bounded, so no query string can cost minutes of CPU
  (``email__regex=``) or end in a 500 (``q=²``, ``id__in=99999999999999999999``).

The modules: ``base`` (the model's database in every query; the URL as input), ``forms``
(rules from ``core.validation``), ``filters`` (the only lookups a URL may name),
``parents`` (users and products, and their deletes), ``orders`` (orders with their parents).
"""

from django.contrib import admin
from django.urls import reverse_lazy

from core.admin import catalog, orders  # noqa: F401  (registers the three ModelAdmins)

admin.site.site_header = "multids administration"
admin.site.site_title = "multids"
admin.site.index_title = "Users, products and orders in three databases"
# The "View site" link of every admin page leads to the databases overview.
admin.site.site_url = reverse_lazy("core:overview")
