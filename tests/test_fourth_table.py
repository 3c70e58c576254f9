"""A fourth table in a fourth database, declared only in the test settings (tests.reviews).

``Review.user_id`` references users with CASCADE, ``Review.product_id`` references products
with PROTECT, and ``rating`` must be 1 to 5. Nothing in ``core`` names reviews: these tests
show that the loader, the guard, ``check_integrity`` and the deletes follow the declarations.
"""

import pytest
from crossdb import deletion, registry
from crossdb.guard import MissingParent
from crossdb.integrity import check_integrity
from crossdb.loading import load
from crossdb.sources import FileSource

from core.models import Order, Product, User
from tests.conftest import all_databases, behind_the_guards_back
from tests.reviews.models import Review


def write_files(directory, **tables):
    for name, text in tables.items():
        (directory / f"{name}.csv").write_text(text)


def test_the_registry_reads_the_fourth_table_off_its_declarations():
    reviews = registry.specs()["reviews"]
    assert reviews.alias == "reviews_db"
    assert reviews.fields == ("id", "user_id", "product_id", "rating")
    assert [(r.field, r.parent, r.on_delete) for r in reviews.references] == [
        ("user_id", "users", "cascade"),
        ("product_id", "products", "protect"),
    ]
    assert registry.tables().index("reviews") > max(
        registry.tables().index("users"), registry.tables().index("products")
    )
    assert [r.child for r in registry.specs()["users"].children] == ["orders", "reviews"]


@all_databases
def test_insert_data_loads_validates_and_orders_the_fourth_table(tmp_path):
    write_files(
        tmp_path,
        users="id,name,email\n1,Ann,ann@example.com\n2,,bad@example.com\n",
        products="id,name,price\n1,Pen,1.50\n",
        reviews=(
            "id,user_id,product_id,rating\n"
            "1,1,1,5\n"  # stored
            "2,1,1,6\n"  # rating out of range
            "3,2,1,4\n"  # user 2 was rejected
            "4,1,9,3\n"  # product 9 does not exist
        ),
    )
    result = load.load(FileSource(tmp_path), batch_size=2)
    assert result.tables["reviews"].stored == 1
    assert sorted(str(r) for r in result.rejections if r.table == "reviews") == [
        "reviews #2 (line 3): rating must be at most 5 (got 6)",
        "reviews #3 (line 4): customer 2 was rejected in this run",
        "reviews #4 (line 5): product 9 does not exist",
    ]
    assert list(Review.objects.values_list("pk", "user_id", "product_id", "rating")) == [
        (1, 1, 1, 5)
    ]
    assert check_integrity().ok


@all_databases
def test_check_integrity_finds_an_orphaned_review():
    User.objects.create(pk=1, name="Ann", email="ann@example.com")
    Product.objects.create(pk=1, name="Pen", price="1.50")
    Review.objects.create(pk=1, user_id=1, product_id=1, rating=4)
    behind_the_guards_back("products_db", "DELETE FROM products WHERE id = 1")
    result = check_integrity()
    assert result.rows_checked["reviews"] == 1
    assert [str(o) for o in result.orphans] == ["review 1: product 1 not found"]


@all_databases
def test_deletes_follow_each_references_on_delete():
    """Deleting a user cascades to its reviews but is refused while it has orders
    (PROTECT); deleting a product is refused while it has reviews (PROTECT)."""
    User.objects.create(pk=1, name="Ann", email="ann@example.com")
    User.objects.create(pk=2, name="Bo", email="bo@example.com")
    Product.objects.create(pk=1, name="Pen", price="1.50")
    Review.objects.create(pk=1, user_id=1, product_id=1, rating=4)
    Review.objects.create(pk=2, user_id=2, product_id=1, rating=2)
    Order.objects.create(pk=1, user_id=2, product_id=1, quantity=1)

    assert User.objects.get(pk=1).delete() == (2, {"reviews.Review": 1, "core.User": 1})
    assert list(Review.objects.values_list("pk", flat=True)) == [2]
    with pytest.raises(deletion.HasChildren, match="customer 2 has 1 order"):
        User.objects.get(pk=2).delete()
    with pytest.raises(deletion.HasChildren, match="product 1 has"):
        Product.objects.filter(pk=1).delete()
    result = deletion.delete("users", [2], with_children=True)
    assert (result.parents, result.children) == (1, {"orders": 1, "reviews": 1})
    assert check_integrity().ok


@all_databases
def test_the_guard_refuses_a_review_of_a_missing_product():
    User.objects.create(pk=1, name="Ann", email="ann@example.com")
    with pytest.raises(MissingParent, match="product 7 does not exist in products_db"):
        Review.objects.create(pk=1, user_id=1, product_id=7, rating=3)
    assert not Review.objects.exists()
