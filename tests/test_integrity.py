"""crossdb.integrity: the cross-database check and the safe deletes, in process."""

import json

import pytest
from crossdb import deletion, integrity
from crossdb.deletion import HasChildren
from crossdb.integrity import check_integrity
from crossdb.loading import load
from django.core.management import CommandError

from core.models import Order, Product, User
from core.sources import FIRST_ID, SyntheticSource, demo_source
from tests.conftest import all_databases, behind_the_guards_back

# The demo data plus order 50 (user 1, product 1): 8 orders, two each for user 1 and product 1.
DEMO_ORDERS = 8
DEMO_ORDERS_OF_USER_1 = 2
DEMO_ORDERS_OF_PRODUCT_1 = 2


def load_demo():
    load.load(demo_source())
    Order.objects.create(pk=50, user_id=1, product_id=1, quantity=1)


@pytest.mark.sqlite_files
@all_databases
def test_clean_data_passes_with_every_file_ok():
    load_demo()
    result = check_integrity()
    assert result.ok
    assert (result.children_checked, result.orphan_count, result.orphans) == (DEMO_ORDERS, 0, [])
    assert result.databases == dict.fromkeys(
        ["default", "users_db", "orders_db", "products_db", "reviews_db"], "ok"
    )


@all_databases
def test_an_order_whose_user_was_deleted_behind_our_back_is_an_orphan():
    load_demo()
    behind_the_guards_back("users_db", "DELETE FROM users WHERE id = 1")
    result = check_integrity()
    assert not result.ok
    assert result.orphan_count == DEMO_ORDERS_OF_USER_1
    assert all(o.missing == (("user_id", "customer", 1),) for o in result.orphans)
    assert str(result.orphans[0]) == f"order {result.orphans[0].id}: customer 1 not found"


@all_databases
def test_orphans_are_found_across_batches_and_only_the_first_few_are_kept():
    """Keyset batches of 7 over 500 orders see every order once; keep caps the list only."""
    load.load(SyntheticSource(users=50, products=50, orders=500))
    last = FIRST_ID + 9  # the first ten generated products
    behind_the_guards_back("products_db", "DELETE FROM products WHERE id <= %s", [last])
    expected = Order.objects.filter(product_id__lte=last).count()
    assert expected > 10
    result = check_integrity(batch_size=7, keep=3)
    assert result.children_checked == 500
    assert result.orphan_count == expected
    assert [o.id for o in result.orphans] == list(
        Order.objects.filter(product_id__lte=last).order_by("pk").values_list("pk", flat=True)[:3]
    )
    assert check_integrity(batch_size=10_000).orphan_count == expected


@all_databases
def test_an_orphan_that_is_gone_by_the_time_it_is_confirmed_is_not_reported(monkeypatch):
    """A safe delete beside the check: the order was read, then it and its user were deleted."""
    load_demo()
    real = integrity._orphans_in

    def read_then_delete(child, batch):
        behind_the_guards_back("users_db", "DELETE FROM users WHERE id = 1")
        monkeypatch.setattr(integrity, "_orphans_in", real)
        found = real(child, batch)
        Order.objects.filter(user_id=1).delete()
        return found

    monkeypatch.setattr(integrity, "_orphans_in", read_then_delete)
    result = check_integrity()
    assert (result.children_checked, result.orphan_count) == (DEMO_ORDERS, 0)


@all_databases
def test_safe_delete_refuses_a_user_with_orders_and_changes_nothing():
    load_demo()
    with pytest.raises(HasChildren) as caught:
        deletion.delete("users", [1])
    assert str(caught.value) == (
        f"customer 1 has {DEMO_ORDERS_OF_USER_1} orders; delete them first, "
        "or delete the customer with its children"
    )
    assert User.objects.filter(pk=1).exists()
    assert Order.objects.filter(user_id=1).count() == DEMO_ORDERS_OF_USER_1


@all_databases
def test_safe_delete_with_orders_deletes_them_then_the_product():
    load_demo()
    result = deletion.delete("products", [1], with_children=True)
    assert (result.children["orders"], result.parents) == (DEMO_ORDERS_OF_PRODUCT_1, 1)
    assert not Product.objects.filter(pk=1).exists()
    assert not Order.objects.filter(product_id=1).exists()
    assert check_integrity().ok


@all_databases
def test_safe_delete_of_a_parent_without_orders_or_that_does_not_exist():
    load_demo()
    result = deletion.delete("products", [9])  # product 9 has no order in the demo
    assert (result.parents, result.children) == (1, {"orders": 0, "reviews": 0})
    assert deletion.delete("users", [999]).total == 0


@all_databases
def test_a_crash_between_the_two_commits_leaves_no_orphan(monkeypatch):
    """The children's databases commit before the parent's; a crash in between leaves a
    parent without orders, never an order without its parent."""
    load_demo()

    class Crash(BaseException):
        pass

    def crash():
        raise Crash

    monkeypatch.setattr(deletion, "_children_committed", crash)
    with pytest.raises(Crash):
        deletion.delete("users", [1], with_children=True)
    assert not Order.objects.filter(user_id=1).exists()
    assert User.objects.filter(pk=1).exists()
    assert check_integrity().ok


@all_databases
def test_django_deletes_go_through_the_declared_references():
    """PROTECT: Model.delete() and QuerySet.delete() refuse a parent that has orders."""
    load_demo()
    with pytest.raises(HasChildren):
        User.objects.get(pk=1).delete()
    with pytest.raises(HasChildren):
        User.objects.filter(pk__in=[1, 2]).delete()
    assert User.objects.filter(pk__in=[1, 2]).count() == 2
    assert Product.objects.filter(pk=9).delete() == (1, {"core.Product": 1})
    assert check_integrity().ok


@all_databases
def test_django_writes_of_an_order_need_its_parents():
    """save(), create(), bulk_create() and update() of a reference refuse a missing parent."""
    from crossdb.guard import MissingParent

    load_demo()
    with pytest.raises(MissingParent, match="customer 999 does not exist"):
        Order.objects.create(pk=500, user_id=999, product_id=1, quantity=1)
    with pytest.raises(MissingParent, match="product 999 does not exist"):
        Order.objects.bulk_create([Order(pk=501, user_id=1, product_id=999, quantity=1)])
    with pytest.raises(MissingParent, match="customer 999 does not exist"):
        Order.objects.filter(pk=50).update(user_id=999)
    order = Order.objects.get(pk=50)
    order.product_id = 998
    with pytest.raises(MissingParent, match="product 998 does not exist"):
        order.save()
    assert not Order.objects.filter(pk__in=[500, 501]).exists()
    assert Order.objects.get(pk=50).user_id == 1
    Order.objects.filter(pk=50).update(user_id=2)  # a stored user: allowed
    assert check_integrity().ok


@all_databases
def test_count_children_counts_per_child_table_and_parent():
    load_demo()
    counts = deletion.count_children("users", [1, 2, 999])
    assert counts["orders", 1] == DEMO_ORDERS_OF_USER_1
    assert not any(pk == 999 for _table, pk in counts)
    assert sum(deletion.count_children("users", range(1, 20)).values()) == DEMO_ORDERS


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        check_integrity(batch_size=0)


@all_databases
def test_check_integrity_command_exit_codes_and_json(run_command, tmp_path):
    load_demo()
    out = run_command("check_integrity", "--json", str(tmp_path / "ok.json"))
    assert "8 orders, 0 reviews, 0 items checked, 0 orphaned" in out
    assert "Integrity holds." in out
    assert json.loads((tmp_path / "ok.json").read_text())["ok"] is True

    behind_the_guards_back("users_db", "DELETE FROM users WHERE id = 1")
    with pytest.raises(CommandError, match=r"integrity check failed: 2 orphaned row\(s\)"):
        run_command("check_integrity", "--show", "1", "--json", str(tmp_path / "bad.json"))
    report = json.loads((tmp_path / "bad.json").read_text())
    assert (report["ok"], report["orphan_count"], report["orphans_listed"]) == (False, 2, 2)
    with pytest.raises(CommandError, match=r"--batch-size must be at least 1 \(got 0\)"):
        run_command("check_integrity", "--batch-size", "0")


@all_databases
def test_delete_row_command(run_command):
    load_demo()
    with pytest.raises(CommandError, match="customer 1 has 2 orders; delete them first"):
        run_command("delete_row", "users", "1")
    with pytest.raises(CommandError, match="orders are deleted with the customer or product"):
        run_command("delete_row", "orders", "3")
    out = run_command("delete_row", "users", "1", "--with-children")
    assert "deleted 2 orders of customer 1" in out
    assert "deleted customer 1" in out
    with pytest.raises(CommandError, match="^customer 1 does not exist$"):
        run_command("delete_row", "users", "1")


@pytest.mark.parametrize("name", ["check_integrity", "delete_row"])
def test_every_option_has_help(name):
    from django.core.management import load_command_class

    command = load_command_class("crossdb", name)
    parser = command.create_parser("manage.py", name)
    assert command.help
    own = [a for a in parser._actions if a.dest not in {"help", "version"}]
    builtin = {
        "verbosity",
        "settings",
        "pythonpath",
        "traceback",
        "no_color",
        "force_color",
        "skip_checks",
    }
    assert all(a.help for a in own if a.dest not in builtin)


@all_databases
def test_a_database_that_fails_mid_scan_is_reported_not_raised(monkeypatch, run_command):
    from django.db import DatabaseError

    load_demo()

    def unreadable(table, ids):
        raise DatabaseError("database disk image is malformed")

    monkeypatch.setattr(integrity, "missing_ids", unreadable)
    result = check_integrity()
    assert not result.ok
    assert result.scan_error == "orders: stopped after 8 rows: database disk image is malformed"
    with pytest.raises(CommandError, match="the scan did not finish"):
        run_command("check_integrity")
