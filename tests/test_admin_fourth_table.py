"""The admin of a fourth table declared only in the test settings (``tests.reviews``), with
no change to core: ``tests/reviews/admin.py`` registers ``Review`` with the generic
referencing admin, and the user and product admins learn of it from its declarations
(``Review.user_id`` CASCADE, ``Review.product_id`` PROTECT)."""

import pytest
from crossdb.admin.forms import ValidatedForm
from crossdb.admin.referencing import ReferencingAdmin
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import Permission
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
from tests.reviews.models import Review

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

REVIEWS = "/admin/reviews/review/"
USERS, PRODUCTS, ORDERS = "/admin/core/user/", "/admin/core/product/", "/admin/core/order/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def rows():
    """Alice: 1 order, 2 reviews. Bob: 1 review, no order. Carol: nothing.
    Laptop: 1 order, 1 review. Mouse: 2 reviews, no order. Pen: nothing."""
    store_customers()
    store_products(("Laptop", "1000.00"), ("Mouse", "30.00"), ("Pen", "2.00"))
    Order.objects.create(id=1, user_id=1, product_id=1, quantity=1)
    Review.objects.bulk_create(
        [
            Review(id=1, user_id=1, product_id=1, rating=5),
            Review(id=2, user_id=1, product_id=2, rating=3),
            Review(id=3, user_id=2, product_id=2, rating=4),
        ]
    )


def form_errors(response):
    return {f: list(e) for f, e in response.context["adminform"].form.errors.items()}


def deletions_logged():
    return set(
        LogEntry.objects.filter(action_flag=DELETION).values_list(
            "content_type__model", "object_id"
        )
    )


def staff(django_user_model, name, *codenames):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=["core", "reviews"], codename__in=codenames
        )
    )
    assert user.user_permissions.count() == len(codenames)
    client = Client()
    client.force_login(user)
    return client


# --- The review list and form ----------------------------------------------------------


def test_the_review_list_links_each_review_to_its_user_and_product(admin_client, rows):
    with (
        CaptureQueriesContext(connections["users_db"]) as users,
        CaptureQueriesContext(connections["products_db"]) as products,
    ):
        response = admin_client.get(REVIEWS)
    page = page_text(response)
    assert f'<a href="{USERS}1/change/">#1 Alice &lt;alice@example.com&gt;</a>' in page
    assert f'<a href="{PRODUCTS}2/change/">#2 Mouse (30.00)</a>' in page
    assert len(users) == 1 and len(products) == 1  # one query per parent table and page
    assert list(response.context["cl"].list_display)[1:] == ["id", "user", "product", "rating"]


def test_the_review_list_filters_and_searches_by_its_references(admin_client, rows):
    by_user = admin_client.get(REVIEWS, {"user_id": "1"}).context["cl"].result_list
    assert sorted(r.pk for r in by_user) == [1, 2]
    by_product = admin_client.get(REVIEWS, {"product_id": "2"}).context["cl"].result_list
    assert sorted(r.pk for r in by_product) == [2, 3]
    by_email = admin_client.get(REVIEWS, {"q": "BOB@example.org"}).context["cl"].result_list
    assert [r.pk for r in by_email] == [3]
    refused = admin_client.get(REVIEWS, {"user_id": "x"})  # "user_id must be an id"
    assert refused.status_code == 302 and refused["Location"] == f"{REVIEWS}?e=1"
    assert admin_client.get(REVIEWS, {"rating__gt": "1"}).status_code == 400  # undeclared


def test_the_add_form_refuses_a_missing_product_in_the_loaders_words(admin_client, rows):
    response = admin_client.post(
        f"{REVIEWS}add/", {"id": "4", "user_id": "1", "product_id": "99", "rating": "6"}
    )
    assert response.status_code == 200
    assert form_errors(response) == {
        "rating": ["rating must be at most 5 (got 6)"],
        "product_id": ["product 99 does not exist"],
    }
    assert not Review.objects.filter(pk=4).exists()
    response = admin_client.post(
        f"{REVIEWS}add/", {"id": "4", "user_id": "3", "product_id": "3", "rating": "5"}
    )
    assert response.status_code == 302
    assert Review.objects.using("reviews_db").filter(pk=4, user_id=3, product_id=3).exists()


def test_the_review_form_names_its_user_and_product(admin_client, rows):
    page = page_text(admin_client.get(f"{REVIEWS}3/change/"))
    assert "Customer (users_db)" in page and "Bob &lt;bob@example.org&gt;" in page
    assert "Product (products_db)" in page and "Mouse (30.00)" in page


def test_a_save_the_guard_refuses_shows_the_form_again(admin_client, rows, monkeypatch):
    """The form's checks pass (its own and the model's clean()), as if the product had been
    deleted right after them: the guard refuses the save, and the form comes back with its
    reason; nothing is stored, nothing logged."""
    monkeypatch.setattr(ValidatedForm, "check_references", lambda self, values, valid: None)
    monkeypatch.setattr(Review, "clean", lambda self: None)
    response = admin_client.post(
        f"{REVIEWS}add/", {"id": "4", "user_id": "1", "product_id": "99", "rating": "2"}
    )
    assert response.status_code == 200
    assert list(response.context["adminform"].form.non_field_errors()) == [
        "Not saved: review 4: product 99 does not exist in products_db; store the product first"
    ]
    assert not Review.objects.filter(pk=4).exists()
    assert not LogEntry.objects.filter(action_flag=ADDITION).exists()


@pytest.mark.parametrize("change", [False, True])
def test_a_parent_deleted_between_the_check_and_the_save(admin_client, rows, monkeypatch, change):
    """No check patched: the product really goes after the form passed and before the save
    (deleted as another program would; a delete through crossdb.deletion from inside this
    request's transaction on reviews_db is refused, see tests/test_promise.py). Adding a
    review for it, or re-pointing one to it, is refused by the guard and shown on the form."""
    real_save = ReferencingAdmin.save_model

    def save_after_a_delete(self, request, obj, form, change):
        behind_the_guards_back("products_db", "DELETE FROM products WHERE id = 3")
        return real_save(self, request, obj, form, change)

    monkeypatch.setattr(ReferencingAdmin, "save_model", save_after_a_delete)
    url = f"{REVIEWS}3/change/" if change else f"{REVIEWS}add/"
    response = admin_client.post(url, {"id": "4", "user_id": "2", "product_id": "3", "rating": "2"})
    assert response.status_code == 200
    (error,) = response.context["adminform"].form.non_field_errors()
    assert error.startswith("Not saved: review ") and "product 3 does not exist" in error
    assert not Product.objects.filter(pk=3).exists()
    assert not Review.objects.filter(product_id=3).exists()
    assert Review.objects.get(pk=3).product_id == 2


# --- The parents learn of the new child table ----------------------------------------------


def test_the_user_and_product_lists_count_reviews_too(admin_client, rows):
    users = admin_client.get(USERS).context["cl"].result_list
    assert {u.pk: u.child_counts for u in users} == {
        1: {"orders": 1, "reviews": 2},
        2: {"reviews": 1},
        3: {},
    }
    page = page_text(admin_client.get(USERS))
    assert f'<a href="{REVIEWS}?user_id=1">2</a>' in page
    products = admin_client.get(PRODUCTS).context["cl"].result_list
    assert {p.pk: p.child_counts.get("reviews", 0) for p in products} == {1: 1, 2: 2, 3: 0}


def test_a_user_with_orders_gets_the_choice_and_its_reviews_would_go_with_it(admin_client, rows):
    page = page_text(admin_client.get(f"{USERS}1/delete/"))
    assert f'<a id="orders-link" href="{ORDERS}?user_id=1">1 order in orders_db</a>' in page
    assert "they keep it from being deleted alone" in page
    assert f'<a id="reviews-link" href="{REVIEWS}?user_id=1">2 reviews in reviews_db</a>' in page
    assert "deleted with it" in page
    assert 'value="Delete it with its 1 order and 2 reviews"' in page
    assert 'name="with_children" value="yes"' in page
    # The plain delete is refused while the order (PROTECT) exists: the page comes back.
    response = admin_client.post(f"{USERS}1/delete/", {"post": "yes"})
    assert response.status_code == 200
    assert response.templates[0].name == "admin/crossdb/delete_parent.html"
    assert Review.objects.filter(user_id=1).count() == 2 and User.objects.filter(pk=1).exists()
    response = admin_client.post(f"{USERS}1/delete/", {"post": "yes", "with_children": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=1).exists()
    assert not Order.objects.filter(user_id=1).exists()
    assert not Review.objects.filter(user_id=1).exists()
    assert deletions_logged() == {("user", "1"), ("order", "1"), ("review", "1"), ("review", "2")}


def test_a_user_with_only_reviews_is_deleted_with_them_by_the_plain_delete(admin_client, rows):
    """CASCADE: the page lists the reviews and offers the plain delete, which takes them."""
    page = page_text(admin_client.get(f"{USERS}2/delete/"))
    assert "1 review in reviews_db</a>: deleted with it" in page
    assert 'value="Delete it with its 1 review"' in page
    assert 'name="with_children"' not in page
    response = admin_client.post(f"{USERS}2/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=2).exists() and not Review.objects.filter(pk=3).exists()
    assert deletions_logged() == {("user", "2"), ("review", "3")}


def test_cascading_to_reviews_needs_delete_permission_on_reviews(django_user_model, rows):
    client = staff(django_user_model, "no_reviews", "view_user", "delete_user")
    page = page_text(client.get(f"{USERS}2/delete/"))
    assert "(this account may not delete them)" in page
    assert 'id="delete-with-children"' not in page
    assert client.post(f"{USERS}2/delete/", {"post": "yes"}).status_code == 403
    assert User.objects.filter(pk=2).exists() and Review.objects.filter(pk=3).exists()
    # The safe action refuses it with the reason, and deletes the user without children.
    response = client.post(
        USERS, {"action": "delete_selected_safely", "_selected_action": ["2", "3"], "post": "yes"}
    )
    notes = [str(m) for m in response.wsgi_request._messages]
    assert notes == [
        "Deleted 1 customer.",
        "Customer 2 was not deleted: its 1 review would go with it, and this account may "
        "not delete reviews.",
    ]
    assert sorted(User.objects.values_list("pk", flat=True)) == [1, 2]
    assert Review.objects.filter(pk=3).exists()
    # With delete permission on reviews too, the same delete goes through.
    client = staff(django_user_model, "with_reviews", "view_user", "delete_user", "delete_review")
    assert client.post(f"{USERS}2/delete/", {"post": "yes"}).status_code == 302
    assert not Review.objects.filter(pk=3).exists()


def test_a_product_with_reviews_is_refused_and_offered_the_choice(admin_client, rows):
    """PROTECT: Mouse has reviews and no order; the plain delete keeps it."""
    page = page_text(admin_client.get(f"{PRODUCTS}2/delete/"))
    assert f'<a id="reviews-link" href="{REVIEWS}?product_id=2">2 reviews in reviews_db</a>' in (
        page
    )
    assert "Deleting it alone would leave its reviews without product" in page
    assert 'value="Delete it with its 2 reviews"' in page
    assert admin_client.post(f"{PRODUCTS}2/delete/", {"post": "yes"}).status_code == 200
    assert Product.objects.filter(pk=2).exists() and Review.objects.filter(product_id=2).count()
    response = admin_client.post(
        PRODUCTS, {"action": "delete_selected_safely", "_selected_action": ["2"], "post": "yes"}
    )
    assert [str(m) for m in response.wsgi_request._messages] == [
        "Product 2 was not deleted: it has 2 reviews in reviews_db. To delete it with its "
        "children, open it and choose “Delete”, or select it in this list and choose the "
        "action “Delete selected products with their orders and reviews”."
    ]
    response = admin_client.post(f"{PRODUCTS}2/delete/", {"post": "yes", "with_children": "yes"})
    assert response.status_code == 302
    assert not Product.objects.filter(pk=2).exists()
    assert not Review.objects.filter(product_id=2).exists()
    assert Review.objects.filter(pk=1).exists()


def test_the_actions_name_every_child_table(admin_client, rows):
    actions = dict(admin_client.get(USERS).context["action_form"].fields["action"].choices)
    assert actions["delete_selected_safely"] == (
        "Delete selected customers with their reviews (kept if they have orders)"
    )
    assert actions["delete_selected_with_children"] == (
        "Delete selected customers with their orders and reviews"
    )
    actions = dict(admin_client.get(PRODUCTS).context["action_form"].fields["action"].choices)
    assert actions["delete_selected_safely"] == (
        "Delete selected products (kept if they have orders and reviews)"
    )
