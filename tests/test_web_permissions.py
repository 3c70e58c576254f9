"""Who may do what on the web side, tried with six accounts: anonymous, non-staff, staff
without permissions, view-only, view+change, and "delete users and products" (view and
delete on users and products, nothing on orders: the account of issue 11 that deleted a
user's orders it could not even list)."""

import json

import pytest
from crossdb import integrity, views
from crossdb.admin import parents as parent_admin
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.test import Client

from core.models import Order, User
from tests.conftest import (
    ALL_DATABASES,
    behind_the_guards_back,
    store_customers,
    store_products,
)

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

USERS, PRODUCTS, ORDERS = "/admin/core/user/", "/admin/core/product/", "/admin/core/order/"

# account -> (is_staff, permissions as "action_model")
ACCOUNTS = {
    "non_staff": (False, []),
    "staff": (True, []),
    "view_only": (
        True,
        ["view_user", "view_product", "view_order", "view_review", "view_shelf", "view_item"],
    ),
    "view_change": (
        True,
        [
            "view_user",
            "view_product",
            "view_order",
            "view_review",
            "view_shelf",
            "view_item",
            "change_user",
            "change_product",
            "change_order",
            "change_review",
        ],
    ),
    "delete_parents": (True, ["view_user", "view_product", "delete_user", "delete_product"]),
    "delete_all": (
        True,
        [
            "view_user",
            "view_product",
            "view_order",
            "view_review",
            "delete_user",
            "delete_product",
            "delete_order",
            "delete_review",
        ],
    ),
}


@pytest.fixture(autouse=True)
def own_data_dir(settings, tmp_path):
    """A data directory of its own, so the full check's once-per-30-s limit starts afresh."""
    settings.CROSSDB = {**settings.CROSSDB, "STATE_DIR": tmp_path}


@pytest.fixture
def rows():
    """Alice (2 orders), Bob (1 order), Carol (none); two products."""
    store_customers()
    store_products(("Laptop", "1000.00"), ("Mouse", "30.00"))
    Order.objects.bulk_create(
        [
            Order(id=1, user_id=1, product_id=1, quantity=2),
            Order(id=2, user_id=1, product_id=2, quantity=1),
            Order(id=3, user_id=2, product_id=2, quantity=5),
        ]
    )


@pytest.fixture
def login(django_user_model, db):
    """login(account) returns a client logged in as that account (None: anonymous)."""

    def logged_in(account):
        client = Client()
        if account is None:
            return client
        is_staff, permissions = ACCOUNTS[account]
        user, _ = django_user_model.objects.get_or_create(username=account, is_staff=is_staff)
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label__in=["core", "reviews", "kinds"], codename__in=permissions
            )
        )
        assert user.user_permissions.count() == len(permissions)
        client.force_login(user)
        return client

    return logged_in


def actions_offered(client, url):
    form = client.get(url).context["action_form"]  # None when no action is offered
    return set(dict(form.fields["action"].choices)) - {""} if form else set()


def deletions_logged():
    return set(
        LogEntry.objects.filter(action_flag=DELETION).values_list(
            "content_type__model", "object_id", "object_repr"
        )
    )


# --- The overview ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "status"),
    [
        (None, 302),
        ("non_staff", 302),
        ("staff", 403),
        ("view_only", 200),
        ("view_change", 200),
        ("delete_parents", 403),
    ],
)
def test_the_overview_needs_view_permission_on_the_three_tables(login, rows, account, status):
    client = login(account)
    for method in (client.get, client.post):
        response = method("/overview/")
        assert response.status_code == status, method
        if status == 302:
            assert response["Location"].startswith("/admin/login/")


def test_the_overview_is_never_cached(login, rows):
    response = login("view_only").get("/overview/")
    assert "no-cache" in response["Cache-Control"] and "no-store" in response["Cache-Control"]


def test_the_full_check_runs_at_most_once_per_interval(login, rows, monkeypatch):
    runs = []
    real = integrity.check_integrity
    monkeypatch.setattr(integrity, "check_integrity", lambda: runs.append(1) or real())
    client = login("view_only")
    first = client.post("/overview/")
    assert first.status_code == 200 and len(runs) == 1
    page = " ".join(first.content.decode().split())
    assert (
        "3 orders, 0 reviews and 0 items checked: every customer or product or shelf they "
        "name exists."
    ) in page
    assert "Last full check: " in page and " UTC, took " in page
    second = client.post("/overview/")
    assert second.status_code == 429 and len(runs) == 1
    page = " ".join(second.content.decode().split())
    assert "Not run: the full check may run once every 30 seconds for the whole site" in page
    assert "3 orders, 0 reviews and 0 items checked" in page  # the last result is still shown
    # Another account, another session: the limit is the site's, not the session's.
    assert login("view_change").post("/overview/").status_code == 429
    assert len(runs) == 1


def test_the_full_check_may_run_again_after_the_interval(login, rows, monkeypatch):
    client = login("view_only")
    assert client.post("/overview/").status_code == 200
    state = views.full_check_throttle.last()
    state["started"] -= 31  # as if it had run 31 s earlier
    views.full_check_throttle.path.write_text(json.dumps(state))
    assert client.post("/overview/").status_code == 200


# --- Deleting users with their orders ----------------------------------------------------


def test_the_cascade_action_is_offered_only_with_delete_permission_on_orders(login, rows):
    assert "delete_selected_with_children" not in actions_offered(login("delete_parents"), USERS)
    assert "delete_selected_safely" in actions_offered(login("delete_parents"), USERS)
    assert "delete_selected_with_children" in actions_offered(login("delete_all"), PRODUCTS)
    assert actions_offered(login("view_change"), USERS) == set()


@pytest.mark.parametrize("confirmed", [False, True])
def test_a_forced_cascade_post_without_order_permission_gets_403(login, rows, confirmed):
    client = login("delete_parents")
    assert client.get(ORDERS).status_code == 403  # it may not even list the orders
    post = {"action": "delete_selected_with_children", "_selected_action": ["1"]}
    response = client.post(USERS, post | ({"post": "yes"} if confirmed else {}))
    assert response.status_code == 403
    assert User.objects.filter(pk=1).exists() and Order.objects.count() == 3
    assert not deletions_logged()


def test_the_delete_page_offers_deleting_orders_only_to_who_may(login, rows):
    page = login("delete_parents").get(f"{USERS}1/delete/").content.decode()
    assert 'id="delete-with-children"' not in page
    assert "2 orders in orders_db" in " ".join(page.split())
    assert 'id="orders-link"' not in page  # it may not open the order list
    assert "needs permission to delete each of them, which this account does not have" in page
    assert 'id="keep-it"' in page
    page = login("delete_all").get(f"{USERS}1/delete/").content.decode()
    assert 'id="delete-with-children"' in page


def test_a_forced_delete_with_orders_post_without_permission_gets_403(login, rows):
    client = login("delete_parents")
    response = client.post(f"{USERS}1/delete/", {"post": "yes", "with_children": "yes"})
    assert response.status_code == 403
    assert User.objects.filter(pk=1).exists() and Order.objects.count() == 3
    # The safe delete of a user without orders stays open to this account.
    assert client.post(f"{USERS}3/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=3).exists()


@pytest.mark.parametrize("account", ["staff", "view_only", "view_change"])
def test_accounts_without_delete_permission_delete_nothing(login, rows, account):
    client = login(account)
    assert client.post(f"{USERS}3/delete/", {"post": "yes"}).status_code == 403
    post = {"action": "delete_selected_with_children", "_selected_action": ["1"], "post": "yes"}
    assert client.post(USERS, post).status_code == 403
    assert User.objects.count() == 3 and Order.objects.count() == 3


def test_a_cascade_logs_the_parent_and_each_order(login, rows):
    client = login("delete_all")
    post = {
        "action": "delete_selected_with_children",
        "_selected_action": ["1", "3"],
        "post": "yes",
    }
    response = client.post(USERS, post)
    assert response.status_code == 302
    assert sorted(User.objects.values_list("pk", flat=True)) == [2]
    assert deletions_logged() == {
        ("user", "1", "Alice <alice@example.com>"),
        ("user", "3", "Carol <carol@example.com>"),
        ("order", "1", "order 1: user 1, product 1 x2"),
        ("order", "2", "order 2: user 1, product 2 x1"),
    }


def test_a_large_cascade_logs_one_summary_entry_for_its_orders(login, rows, monkeypatch):
    monkeypatch.setattr(parent_admin, "LOG_EACH_MAX", 1)
    response = login("delete_all").post(
        f"{PRODUCTS}2/delete/", {"post": "yes", "with_children": "yes"}
    )
    assert response.status_code == 302
    assert deletions_logged() == {
        ("product", "2", "Mouse (30.00)"),
        ("order", None, "2 orders of product 2"),
    }
    assert list(Order.objects.values_list("pk", flat=True)) == [1]


# --- Lists: who gets which page and which links ------------------------------------------


@pytest.mark.parametrize(
    ("account", "status"),
    [
        ("staff", 403),
        ("view_only", 200),
        ("view_change", 200),
        ("delete_parents", 403),
        ("delete_all", 200),
    ],
)
def test_the_order_list_needs_view_permission_on_orders(login, rows, account, status):
    assert login(account).get(ORDERS).status_code == status


def test_the_order_list_links_to_users_and_products_for_who_may_open_them(
    login, rows, django_user_model
):
    page = login("view_only").get(ORDERS).content.decode()
    assert f'<a href="{USERS}1/change/">#1 Alice &lt;alice@example.com&gt;</a>' in page
    assert f'<a href="{PRODUCTS}2/change/">#2 Mouse (30.00)</a>' in page
    orders_only = django_user_model.objects.create_user("orders_only", is_staff=True)
    orders_only.user_permissions.set(Permission.objects.filter(codename="view_order"))
    client = Client()
    client.force_login(orders_only)
    page = client.get(ORDERS).content.decode()
    assert "Alice" not in page and f'href="{USERS}1/change/"' not in page


# --- Parents' text only for who may view the parent model (issue 32) ---------------------


@pytest.fixture
def change_orders_only(django_user_model):
    """A staff account whose one permission is "change order": no view on customers."""
    account = django_user_model.objects.create_user("change_orders", is_staff=True)
    account.user_permissions.set(Permission.objects.filter(codename="change_order"))
    client = Client()
    client.force_login(account)
    return client


CUSTOMER_TEXT = ("Alice", "alice@example.com", "Bob", "bob@example.org", "Carol", "example.")


def leaked(response):
    page = response.content.decode()
    return [text for text in CUSTOMER_TEXT if text in page]


def test_an_order_clerk_sees_no_customer_names_or_emails(change_orders_only, rows):
    listed = change_orders_only.get(ORDERS)
    assert listed.status_code == 200 and leaked(listed) == []
    assert '<td class="field-user">#1</td>' in listed.content.decode()
    assert '<td class="field-product">#2</td>' in listed.content.decode()  # products too
    assert "Mouse" not in listed.content.decode()
    change_page = change_orders_only.get(f"{ORDERS}1/change/")
    assert change_page.status_code == 200 and leaked(change_page) == []
    assert "Laptop" not in change_page.content.decode()


def test_an_order_clerk_cannot_walk_the_customers_by_re_pointing_an_order(change_orders_only, rows):
    """It may still re-point the order (its permission), but sees only the new id."""
    for user in (2, 3):
        saved = change_orders_only.post(
            f"{ORDERS}1/change/", {"user_id": user, "product_id": 1, "quantity": 2}
        )
        assert saved.status_code == 302
        assert Order.objects.get(pk=1).user_id == user
        assert leaked(change_orders_only.get(f"{ORDERS}1/change/")) == []
        assert leaked(change_orders_only.get(ORDERS)) == []


def test_an_order_clerk_cannot_find_orders_by_a_customers_email(change_orders_only, login, rows):
    by_email = change_orders_only.get(ORDERS, {"q": "alice@example.com"})
    assert by_email.status_code == 200 and list(by_email.context["cl"].result_list) == []
    assert "email" not in by_email.context["cl"].search_help_text
    # The control: an account that may view customers finds Alice's orders by her email.
    found = login("view_only").get(ORDERS, {"q": "alice@example.com"}).context["cl"]
    assert sorted(o.pk for o in found.result_list) == [1, 2]
    assert "the customer's email" in found.search_help_text


def test_an_order_clerk_cannot_tell_a_stored_customer_from_a_missing_one(
    change_orders_only, login, rows
):
    """An order naming a missing user (raw SQL) looks like any other to it."""
    behind_the_guards_back(
        "orders_db", "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (9, 404, 1, 1)"
    )
    listed = change_orders_only.get(ORDERS).content.decode()
    assert '<td class="field-user">#404</td>' in listed and "not found" not in listed
    assert "not found" not in change_orders_only.get(f"{ORDERS}9/change/").content.decode()
    # Who may view customers is told.
    assert "customer 404 not found" in login("view_only").get(ORDERS).content.decode()
