"""The admin reads and writes each model in its own database, validates through
crossdb.rules, fetches an order page's parents once per database, and deletes users and
products only through crossdb.deletion."""

from decimal import Decimal

import pytest
from crossdb import registry
from crossdb.admin.forms import ValidatedForm
from crossdb.admin.referencing import attach_parents
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.messages import get_messages
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from core.models import Order, Product, User
from tests.conftest import (
    ALL_DATABASES,
    behind_the_guards_back,
    page_text,
    store_customers,
    store_products,
)

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

ORDERS = "/admin/core/order/"
USERS = "/admin/core/user/"
PRODUCTS = "/admin/core/product/"

REFUSAL = (
    "Customer 1 was not deleted: it has 2 orders in orders_db. To delete it with its "
    "children, open it and choose “Delete”, or select it in this list and choose the action "
    "“Delete selected customers with their orders and reviews”."
)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hash test passwords cheaply: PBKDF2's million rounds cost 0.4 s per test user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def rows():
    """Alice (2 orders), Bob (1 order), Carol (none); three products; three orders."""
    store_customers()
    store_products(("Laptop", "1000.00"), ("Headphones", "150.00"), ("Mouse", "30.00"))
    Order.objects.bulk_create(
        [
            Order(id=1, user_id=1, product_id=1, quantity=2),
            Order(id=2, user_id=1, product_id=2, quantity=1),
            Order(id=3, user_id=2, product_id=2, quantity=5),
        ]
    )


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def queries_per_alias(client, url):
    """GET url; return the response and the SQL run on each database."""
    with (
        CaptureQueriesContext(connections["users_db"]) as users,
        CaptureQueriesContext(connections["products_db"]) as products,
        CaptureQueriesContext(connections["orders_db"]) as orders,
    ):
        response = client.get(url)
    return response, {"users_db": users, "products_db": products, "orders_db": orders}


# --- Lists, search, filters ------------------------------------------------------------------


def test_order_list_shows_each_orders_user_and_product_from_their_databases(admin_client, rows):
    page = page_text(admin_client.get(ORDERS))
    assert "alice@example.com" in page and "Alice" in page
    assert "Headphones" in page and "150.00" in page
    assert "bob@example.org" in page


def test_order_list_reads_users_and_products_once_per_page(admin_client, rows):
    """150 orders by 3 users of 3 products: one query per parent database, page 1 and 2."""
    Order.objects.bulk_create(
        Order(id=n, user_id=n % 3 + 1, product_id=n % 3 + 1, quantity=1) for n in range(4, 151)
    )
    for url in (ORDERS, f"{ORDERS}?p=2"):
        response, queries = queries_per_alias(admin_client, url)
        assert response.status_code == 200
        assert len(queries["users_db"]) == 1, queries["users_db"].captured_queries
        assert len(queries["products_db"]) == 1, queries["products_db"].captured_queries
        # The page count and the page itself; no second count of the whole table.
        assert len(queries["orders_db"]) == 2, queries["orders_db"].captured_queries
    assert len(response.context["cl"].result_list) == 50


def test_attach_parents_fills_the_accessors_without_more_queries(rows):
    with CaptureQueriesContext(connections["users_db"]) as users:
        orders = attach_parents(Order.objects.order_by("pk"), registry.spec(Order))
        assert [o.parents["user_id"].name for o in orders] == ["Alice", "Alice", "Bob"]
    assert [o.parents["product_id"].name for o in orders] == ["Laptop", "Headphones", "Headphones"]
    assert len(users) == 1


def test_an_order_whose_user_is_missing_says_so(admin_client, rows):
    behind_the_guards_back(
        "orders_db", "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (9, 99, 1, 1)"
    )
    page = page_text(admin_client.get(ORDERS))
    assert '<strong class="errornote">customer 99 not found</strong>' in page
    assert "customer 99 not found" in page_text(admin_client.get(f"{ORDERS}9/change/"))


def test_user_and_product_lists_count_orders_in_one_query(admin_client, rows):
    response, queries = queries_per_alias(admin_client, USERS)
    counts = {u.pk: u.child_counts.get("orders", 0) for u in response.context["cl"].result_list}
    assert counts == {1: 2, 2: 1, 3: 0}
    assert len(queries["orders_db"]) == 1
    products = admin_client.get(PRODUCTS).context["cl"].result_list
    assert {p.pk: p.child_counts.get("orders", 0) for p in products} == {1: 1, 2: 2, 3: 0}


@pytest.mark.parametrize(
    ("query", "found"),
    [("alice", ["Alice"]), ("example.org", ["Bob"]), ("CAROL@", ["Carol"]), ("nobody", [])],
)
def test_users_are_searched_by_name_and_email(admin_client, rows, query, found):
    result = admin_client.get(USERS, {"q": query}).context["cl"].result_list
    assert [u.name for u in result] == found


def test_products_are_searched_by_name(admin_client, rows):
    result = admin_client.get(PRODUCTS, {"q": "phone"}).context["cl"].result_list
    assert [p.name for p in result] == ["Headphones"]


@pytest.mark.parametrize(
    ("query", "found"),
    [("alice@example.com", [2, 1]), ("3", [3]), ("2", [3, 2]), ("nobody@x.org", [])],
)
def test_orders_are_searched_by_ids_and_by_user_email(admin_client, rows, query, found):
    """Digits match the order, user or product id; anything else a user's email."""
    result = admin_client.get(ORDERS, {"q": query}).context["cl"].result_list
    assert [o.pk for o in result] == found


def test_filters_narrow_each_list(admin_client, rows):
    users = admin_client.get(USERS, {"domain": "example.org"}).context["cl"].result_list
    assert [u.name for u in users] == ["Bob"]
    cheap = admin_client.get(PRODUCTS, {"price": "0"}).context["cl"].result_list
    assert [p.name for p in cheap] == ["Mouse"]
    big = admin_client.get(ORDERS, {"quantity": "2"}).context["cl"].result_list
    assert [o.pk for o in big] == [3]


def test_the_name_length_filter_is_gone(admin_client, rows):
    filters = [f.title for f in admin_client.get(USERS).context["cl"].filter_specs]
    assert filters == ["email domain"]
    assert admin_client.get(USERS, {"name_length": "short"}).status_code == 400


def test_the_order_count_has_a_thousands_separator(admin_client, rows):
    Order.objects.bulk_create(
        Order(id=n, user_id=1, product_id=1, quantity=1) for n in range(4, 1238)
    )
    page = page_text(admin_client.get(ORDERS))
    assert "1,237 orders" in page and "1237 orders" not in page
    assert "Select all 1,237 orders" in page and "All 1,237 selected" in page
    assert "1,236 results" in page_text(admin_client.get(ORDERS, {"q": "1"}))  # all but order 3


@pytest.mark.parametrize(
    ("url", "column", "expected"),
    [
        (ORDERS, "user", [2, 1, 3]),  # by user id: user 1 (newest order first), user 2
        (ORDERS, "product", [1, 3, 2]),
        (ORDERS, "quantity", [2, 1, 3]),
        (USERS, "name", [1, 2, 3]),
        (USERS, "email", [1, 2, 3]),
        (PRODUCTS, "price", [3, 2, 1]),
        (PRODUCTS, "name", [2, 1, 3]),
    ],
)
def test_columns_the_database_can_sort_are_sortable(admin_client, rows, url, column, expected):
    cl = admin_client.get(url).context["cl"]
    index = list(cl.list_display).index(column)
    assert column in cl.sortable_by
    result = admin_client.get(url, {"o": str(index)}).context["cl"].result_list
    assert [r.pk for r in result] == expected


def test_counts_from_other_databases_are_not_sortable(admin_client, rows):
    """The count columns come from other databases: the header offers no sorting."""
    page = admin_client.get(USERS).content.decode()
    cl = admin_client.get(USERS).context["cl"]
    assert cl.sortable_by == ["id", "name", "email"]
    assert cl.list_display[-2:] == ["orders_count", "reviews_count"] or cl.list_display[-2:] == (
        "orders_count",
        "reviews_count",
    )
    assert "sortable column-orders_count" not in page


def test_order_detail_shows_user_and_product(admin_client, rows):
    page = page_text(admin_client.get(f"{ORDERS}2/change/"))
    assert "Alice &lt;alice@example.com&gt;" in page
    assert "Headphones (150.00)" in page


# --- Forms: one set of rules with insert_data -----------------------------------------------


def form_errors(response):
    return {
        field: list(errors) for field, errors in response.context["adminform"].form.errors.items()
    }


def test_user_form_errors_are_core_validations_words(admin_client, rows):
    response = admin_client.post(f"{USERS}add/", {"id": "x1", "name": "  ", "email": "nope"})
    assert form_errors(response) == {
        "id": ["id must be a whole number (got 'x1')"],
        "name": ["name is required"],
        "email": ["email is not a valid email address (got 'nope')"],
    }
    assert not User.objects.filter(pk__gt=3).exists()


def test_a_users_email_must_be_unique_ignoring_case(admin_client, rows):
    response = admin_client.post(
        f"{USERS}add/", {"id": "4", "name": "Al", "email": "ALICE@example.com"}
    )
    assert form_errors(response) == {
        "email": ["email 'ALICE@example.com' is already used by customer 1"]
    }


def test_product_price_rules_are_core_validations(admin_client, rows):
    response = admin_client.post(f"{PRODUCTS}add/", {"id": "4", "name": "Pen", "price": "1.234"})
    assert form_errors(response) == {
        "price": ["price must have at most 2 decimal places (got '1.234')"]
    }


def test_an_order_form_shows_every_problem_at_once(admin_client, rows):
    """A bad quantity and a missing user and product, all on the first submission."""
    response = admin_client.post(
        f"{ORDERS}add/", {"id": "4", "user_id": "98", "product_id": "99", "quantity": "0"}
    )
    assert form_errors(response) == {
        "quantity": ["quantity must be at least 1 (got 0)"],
        "user_id": ["customer 98 does not exist"],
        "product_id": ["product 99 does not exist"],
    }
    response = admin_client.post(
        f"{ORDERS}add/", {"id": "4", "user_id": "x", "product_id": "99", "quantity": "1"}
    )
    assert form_errors(response) == {
        "user_id": ["user_id must be a whole number (got 'x')"],
        "product_id": ["product 99 does not exist"],
    }
    assert not Order.objects.filter(pk=4).exists()


def test_an_order_the_guard_refuses_is_shown_again_not_stored(admin_client, rows, monkeypatch):
    """The validate-then-save race: the form's checks pass (patched here, as if customer 99
    existed when they ran), the guard refuses the save inside its transaction, and the
    admin shows the form again with the guard's words: no 500, no order, no log entry."""
    monkeypatch.setattr(ValidatedForm, "check_references", lambda self, values, valid: None)
    monkeypatch.setattr(Order, "clean", lambda self: None)
    response = admin_client.post(
        f"{ORDERS}add/", {"id": "4", "user_id": "99", "product_id": "1", "quantity": "1"}
    )
    assert response.status_code == 200
    assert list(response.context["adminform"].form.non_field_errors()) == [
        "Not saved: order 4: customer 99 does not exist in users_db; store the customer first"
    ]
    assert 'value="99"' in response.content.decode()  # the input is kept
    assert not Order.objects.filter(pk=4).exists()
    assert not LogEntry.objects.filter(action_flag=ADDITION).exists()


def test_a_valid_row_is_cleaned_and_stored_in_its_own_database(admin_client, rows):
    response = admin_client.post(f"{PRODUCTS}add/", {"id": "4", "name": "  Pen ", "price": "2.5"})
    assert response.status_code == 302
    pen = Product.objects.using("products_db").get(pk=4)
    assert (pen.name, pen.price) == ("Pen", Decimal("2.50"))
    response = admin_client.post(
        f"{ORDERS}add/", {"id": "4", "user_id": "3", "product_id": "4", "quantity": "2"}
    )
    assert response.status_code == 302
    assert Order.objects.using("orders_db").filter(pk=4, user_id=3, product_id=4).exists()


def test_the_add_form_offers_the_next_id_and_the_change_form_freezes_it(admin_client, rows):
    assert admin_client.get(f"{USERS}add/").context["adminform"].form.initial["id"] == 4
    response = admin_client.post(f"{USERS}3/change/", {"name": "Caroline", "email": "c@ex.com"})
    assert response.status_code == 302
    assert User.objects.get(pk=3).name == "Caroline"
    assert User.objects.count() == 3


# --- Deleting users and products -------------------------------------------------------------


def test_deleting_a_user_with_orders_opens_one_page_with_the_two_choices(admin_client, rows):
    response = admin_client.get(f"{USERS}1/delete/")
    page = page_text(response)
    assert response.templates[0].name == "admin/crossdb/delete_parent.html"
    assert "Are you sure" not in page and not messages_of(response)
    assert f'<a id="orders-link" href="{ORDERS}?user_id=1">2 orders in orders_db</a>' in page
    assert "they keep it from being deleted alone" in page
    assert 'name="with_children" value="yes"' in page
    assert 'value="Delete it with its 2 orders"' in page
    assert f'<a href="{USERS}1/change/" id="keep-it" class="button cancel-link">Keep it</a>' in (
        page
    )
    linked = admin_client.get(f"{ORDERS}?user_id=1").context["cl"].result_list
    assert sorted(o.pk for o in linked) == [1, 2]


def test_a_plain_delete_post_of_a_user_with_orders_deletes_nothing(admin_client, rows):
    """Django's own confirmation form posts only post=yes: that never deletes orders."""
    response = admin_client.post(f"{USERS}1/delete/", {"post": "yes"})
    assert response.status_code == 200
    assert response.templates[0].name == "admin/crossdb/delete_parent.html"
    assert User.objects.filter(pk=1).exists()
    assert Order.objects.filter(user_id=1).count() == 2
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()


def test_delete_it_with_its_orders_deletes_and_logs_every_row(admin_client, rows):
    response = admin_client.post(f"{USERS}1/delete/", {"post": "yes", "with_children": "yes"})
    assert response.status_code == 302 and response["Location"] == USERS
    assert messages_of(response) == [
        "Its 2 orders were deleted first.",
        "The customer “Alice <alice@example.com>” was deleted successfully.",
    ]
    assert not User.objects.filter(pk=1).exists()
    assert not Order.objects.filter(user_id=1).exists()
    logged = set(
        LogEntry.objects.filter(action_flag=DELETION).values_list(
            "content_type__model", "object_id"
        )
    )
    assert logged == {("user", "1"), ("order", "1"), ("order", "2")}


def test_a_user_without_orders_is_deleted_and_logged(admin_client, rows):
    response = admin_client.post(f"{USERS}3/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=3).exists()
    assert LogEntry.objects.filter(action_flag=DELETION, object_id="3").exists()


def test_djangos_delete_selected_is_not_offered(admin_client, rows):
    for url in (USERS, PRODUCTS):
        actions = dict(admin_client.get(url).context["action_form"].fields["action"].choices)
        assert "delete_selected" not in actions
        assert "delete_selected_with_children" in actions


def test_the_safe_action_deletes_those_without_orders_and_refuses_the_others(admin_client, rows):
    selected = {"action": "delete_selected_safely", "_selected_action": ["1", "3"]}
    confirm = admin_client.post(USERS, selected)
    assert "kept: it has orders" in page_text(confirm)
    assert User.objects.count() == 3  # nothing happens before the confirmation
    response = admin_client.post(USERS, selected | {"post": "yes"})
    assert messages_of(response) == ["Deleted 1 customer.", REFUSAL]
    assert sorted(User.objects.values_list("pk", flat=True)) == [1, 2]


def test_delete_with_orders_deletes_the_orders_then_the_product(admin_client, rows):
    selected = {"action": "delete_selected_with_children", "_selected_action": ["2"]}
    confirm = page_text(admin_client.post(PRODUCTS, selected))
    assert "deleted together with their children: 2 orders in orders_db" in confirm
    response = admin_client.post(PRODUCTS, selected | {"post": "yes"})
    assert messages_of(response) == ["Deleted 1 product and 2 orders."]
    assert not Product.objects.filter(pk=2).exists()
    assert list(Order.objects.values_list("pk", flat=True)) == [1]


def test_orders_are_deleted_in_the_orders_database(admin_client, rows):
    response = admin_client.post(f"{ORDERS}3/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Order.objects.using("orders_db").filter(pk=3).exists()


# --- Staff only, CSRF on ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [ORDERS, USERS, f"{ORDERS}1/change/", "/overview/", "/"])
def test_every_page_sends_strangers_to_the_staff_login(client, rows, url):
    response = client.get(url, follow=True)
    assert response.redirect_chain[-1][0].startswith("/admin/login/")


def test_a_logged_in_user_who_is_not_staff_gets_no_admin(client, django_user_model, rows):
    django_user_model.objects.create_user("visitor", password="a-long-password-1")
    client.login(username="visitor", password="a-long-password-1")
    response = client.get(ORDERS)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert client.get("/overview/")["Location"].startswith("/admin/login/")


def test_a_post_without_the_csrf_token_is_refused(admin_user, rows):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(f"{USERS}3/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert User.objects.filter(pk=3).exists()
