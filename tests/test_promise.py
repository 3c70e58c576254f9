"""The promise under ordinary Django code (issue 15), in process, one test per way it broke.

Each test here left orphans, a stale email key or a wrong refusal before the guard learnt
the rule for the caller's own transactions (``crossdb.guard``: a parent counts once it is
committed; a delete cannot commit inside a transaction on a children's database), the base
manager, ``_raw_delete``, the key's every write path and the bounded waits.
``tests/test_postgres.py`` runs this file again on PostgreSQL; the commands a user runs
(``flush``, ``migrate``, ``migrate_all``, ``loaddata``, a kill -9) are in
``tests/test_promise_commands.py``.
"""

import threading

import pytest
from crossdb import deletion, guard
from crossdb.guard import CommitOrderError, GuardTimeout, MissingParent
from crossdb.integrity import check_integrity
from crossdb.orm import KeyNotComputable
from crossdb.rules import email_key
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Value
from django.db.models.functions import Upper

from core.models import Order, Product, User
from tests.conftest import all_databases, behind_the_guards_back, store_customers, store_products


def seed():
    """Users 1-3, products 1-2, orders 1 (customer 1) and 2 (customer 2)."""
    store_customers()
    store_products(("Pen", "1.50"), ("Ink", "3.00"))
    Order.objects.create(id=1, user_id=1, product_id=1, quantity=1)
    Order.objects.create(id=2, user_id=2, product_id=2, quantity=2)


class PaymentFailed(Exception):
    pass


def assert_clean():
    result = check_integrity()
    assert result.ok, (result.orphans, result.stale_keys, result.shared_keys)


# --- A parent counts once it is committed ---------------------------------------------------


@all_databases
def test_an_order_for_a_user_in_an_open_transaction_is_refused_and_the_rollback_leaves_none():
    seed()
    with pytest.raises(PaymentFailed), transaction.atomic(using="users_db"):
        user = User.objects.create(id=500, name="Eve", email="eve@example.com")
        with pytest.raises(MissingParent) as refused:
            Order.objects.create(id=500, user_id=user.id, product_id=1, quantity=1)
        raise PaymentFailed
    assert str(refused.value) == (
        "order 500: customer 500 is not committed yet (it is in this thread's open transaction "
        "on users_db); a parent counts once it is committed: write the order after that "
        "transaction commits, for instance in transaction.on_commit(..., using='users_db')"
    )
    assert not Order.objects.filter(id=500).exists()
    assert_clean()


@all_databases
def test_bulk_create_for_a_product_in_an_open_transaction_is_refused():
    seed()
    with pytest.raises(PaymentFailed), transaction.atomic(using="products_db"):
        Product.objects.create(id=9, name="Pad", price="2.00")
        with pytest.raises(MissingParent, match="product 9 is not committed yet"):
            Order.objects.bulk_create([Order(id=9, user_id=1, product_id=9, quantity=1)])
        raise PaymentFailed
    assert not Order.objects.filter(id=9).exists()
    assert_clean()


@all_databases
def test_update_to_a_user_in_an_open_transaction_is_refused():
    seed()
    with pytest.raises(PaymentFailed), transaction.atomic(using="users_db"):
        User.objects.create(id=501, name="Fay", email="fay@example.com")
        with pytest.raises(MissingParent, match="customer 501 is not committed yet"):
            Order.objects.filter(id=1).update(user_id=501)
        raise PaymentFailed
    assert Order.objects.get(id=1).user_id == 1
    assert_clean()


@all_databases
def test_on_commit_is_how_a_user_and_its_order_are_created_together():
    seed()
    with transaction.atomic(using="users_db"):
        User.objects.create(id=502, name="Gus", email="gus@example.com")
        transaction.on_commit(
            lambda: Order.objects.create(id=502, user_id=502, product_id=1, quantity=1),
            using="users_db",
        )
    assert Order.objects.get(id=502).user_id == 502
    assert_clean()


@all_databases
def test_a_committed_user_counts_inside_a_transaction_on_its_database_unless_deleted_there():
    seed()
    with pytest.raises(PaymentFailed), transaction.atomic(using="users_db"):
        User.objects.filter(id=3).update(name="Carol Ann")  # a write holding users_db
        Order.objects.create(id=3, user_id=3, product_id=1, quantity=1)
        deletion.delete("users", [3], with_children=True)  # its order goes first, committed
        with pytest.raises(MissingParent) as refused:
            Order.objects.create(id=4, user_id=3, product_id=1, quantity=1)
        raise PaymentFailed
    assert "customer 3 is deleted in this thread's open transaction on users_db" in str(
        refused.value
    )
    assert User.objects.filter(id=3).exists()  # the delete rolled back with the caller
    assert not Order.objects.filter(id__in=[3, 4]).exists()
    assert_clean()


@all_databases
def test_a_user_this_thread_has_locked_counts_without_waiting_for_itself(settings):
    """Changing a user's email (a unique key: PostgreSQL locks the row against FOR KEY
    SHARE), then ordering for that user, in one transaction on users_db: the order's check
    must not wait for the thread's own lock (it would wait out the whole bound)."""
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 2}
    with transaction.atomic(using="users_db"):
        User.objects.filter(id=1).update(email="alice@new.example")
        alice = User.objects.get(id=1)
        alice.name = "Alice B."
        alice.save()  # a savepoint: the lock is a subtransaction's
        Order.objects.create(id=5, user_id=1, product_id=1, quantity=1)
    assert Order.objects.get(id=5).user_id == 1
    assert User.objects.get(id=1).email_key == "alice@new.example"
    assert_clean()


@all_databases
@pytest.mark.parametrize("change", ["save", "bulk_update"])
def test_a_user_locked_in_a_savepoint_of_this_thread_counts_without_waiting(settings, change):
    """The same through save() or bulk_update(), which write in a savepoint: the committed
    row's lock belongs to a subtransaction PostgreSQL forgets once the savepoint is released
    (found by tests/test_guard_machine.py)."""
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 2}
    with transaction.atomic(using="users_db"):
        carol = User.objects.get(id=3)
        carol.email = "Straße@example.com"  # a new key: the row is locked against KEY SHARE
        if change == "save":
            carol.save()
        else:
            User.objects.bulk_update([carol], ["email"])
        Order.objects.create(id=6, user_id=3, product_id=1, quantity=1)
    assert Order.objects.get(id=6).user_id == 3
    assert_clean()


@all_databases
def test_a_flush_of_the_orders_database_never_moves_the_deletion_counters_back():
    """Loaders compare the counters with what they saw at their start: a flush that reset
    them to zero would let as many later deletes pass unseen."""
    from django.core.management import call_command

    seed()
    deletion.delete("users", [3])
    before = guard.counters("orders_db", ["users", "products"])
    assert before["users"] >= 1
    call_command("flush", database="orders_db", interactive=False, verbosity=0)
    after = guard.counters("orders_db", ["users", "products"])
    assert after["users"] > before["users"] and after["products"] >= before["products"]
    assert not Order.objects.exists()


# --- Deletes commit the children's side first ----------------------------------------------


@all_databases
def test_a_delete_inside_a_transaction_on_the_childrens_database_is_refused():
    seed()
    with pytest.raises(PaymentFailed), transaction.atomic(using="orders_db"):
        with pytest.raises(CommitOrderError) as refused:
            deletion.delete("users", [1], with_children=True)
        raise PaymentFailed
    assert str(refused.value).startswith(
        "cannot delete customer 1 inside an open transaction on orders_db: the children there "
        "must commit before the parent's change"
    )
    assert User.objects.filter(id=1).exists() and Order.objects.filter(user_id=1).exists()
    assert_clean()


@all_databases
def test_the_base_manager_and_raw_delete_go_through_the_guard():
    seed()
    with pytest.raises(deletion.HasChildren, match="customer 1 has 1 order"):
        User._base_manager.filter(id=1).delete()
    with pytest.raises(deletion.HasChildren, match="customer 2 has 1 order"):
        User.objects.filter(id=2)._raw_delete(using="users_db")
    assert User._base_manager.filter(id=3)._raw_delete(using="users_db") == 1  # no orders
    assert User._base_manager.filter(id=1).exists()
    Order._base_manager.filter(user_id=2).delete()  # children: Django's own delete
    assert User._base_manager.filter(id=2).delete() == (1, {"core.User": 1})
    assert_clean()


# --- The email key is the key of the email, on every write path -----------------------------


@all_databases
def test_save_with_update_fields_writes_the_key_with_the_email():
    seed()
    user = User.objects.get(id=1)
    user.email = "BOB@example.org"  # Bob's address, in capitals
    with pytest.raises(IntegrityError):
        user.save(update_fields=["email"])
    user.email = "Alice.New@Example.com"
    user.save(update_fields=["email"])
    assert User.objects.get(id=1).email_key == "alice.new@example.com"
    assert_clean()


@all_databases
def test_bulk_update_writes_the_key_with_the_email():
    seed()
    alice, carol = User.objects.filter(id__in=[1, 3]).order_by("id")
    alice.email, carol.email = "ALICE@new.example", "Straße@example.com"
    User.objects.bulk_update([alice, carol], ["email"])
    assert dict(User.objects.values_list("id", "email_key").filter(id__in=[1, 3])) == {
        1: "alice@new.example",
        3: email_key("Straße@example.com"),
    }
    carol.email = "bob@EXAMPLE.org"
    with pytest.raises(IntegrityError):
        User.objects.bulk_update([carol], ["email"])
    assert_clean()


@all_databases
def test_update_computes_the_key_and_refuses_what_it_cannot_compute():
    seed()
    User.objects.filter(id=1).update(email="A.Lice@Example.com")
    assert User.objects.get(id=1).email_key == "a.lice@example.com"
    with pytest.raises(IntegrityError):
        User.objects.filter(id=3).update(email="BOB@example.org")
    with pytest.raises(KeyNotComputable, match="update\\(email=...\\) needs the value itself"):
        User.objects.filter(id=3).update(email=Upper("email"))
    with pytest.raises(KeyNotComputable, match="users.email_key is computed from email"):
        User.objects.filter(id=3).update(email_key="x@example.com")
    with pytest.raises(KeyNotComputable, match="needs the value itself"):
        User.objects.filter(id=3).update(email=Value("v@example.com"))
    assert_clean()


@all_databases
def test_bulk_create_updating_conflicts_writes_the_key_with_the_email():
    seed()
    User.objects.bulk_create(
        [User(id=1, name="Alice", email="Alice@Elsewhere.example")],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["email"],
    )
    assert User.objects.get(id=1).email_key == "alice@elsewhere.example"
    assert_clean()


@all_databases
def test_check_integrity_finds_stale_keys_and_the_rows_they_hide():
    seed()
    behind_the_guards_back("users_db", "UPDATE users SET email = 'BOB@example.org' WHERE id = 3")
    behind_the_guards_back("users_db", "UPDATE users SET email_key = 'zz' WHERE id = 1")
    result = check_integrity()
    assert not result.ok
    assert result.stale_key_count == 2
    assert {(k.id, k.stored, k.expected) for k in result.stale_keys} == {
        (1, "zz", "alice@example.com"),
        (3, "carol@example.com", "bob@example.org"),
    }
    assert [(s.key, s.ids) for s in result.shared_keys] == [("bob@example.org", (2, 3))]


# --- Valid writes succeed, invalid ones are refused with the right words --------------------


@all_databases
def test_bulk_update_of_references_checks_the_values_not_the_expression():
    seed()
    first, second = Order.objects.order_by("id")
    first.user_id, second.product_id = 3, 1
    assert Order.objects.bulk_update([first, second], ["user_id", "product_id"]) == 2
    assert list(Order.objects.order_by("id").values_list("user_id", "product_id")) == [
        (3, 1),
        (2, 1),
    ]
    second.user_id = 999
    with pytest.raises(MissingParent, match="^order 2: customer 999 does not exist in users_db"):
        Order.objects.bulk_update([second], ["user_id"])
    second.user_id = F("user_id") + 1
    with pytest.raises(MissingParent, match="expression"):
        Order.objects.bulk_update([second], ["user_id"])
    assert Order.objects.get(id=2).user_id == 2
    assert_clean()


@all_databases
def test_ids_given_as_text_are_converted_as_django_converts_them():
    seed()
    order = Order.objects.create(id=7, user_id="1", product_id="2", quantity=1)
    assert Order.objects.get(id=7).user_id == 1 and order.pk == 7
    Order.objects.filter(id=7).update(user_id="3")
    assert Order.objects.get(id=7).user_id == 3
    with pytest.raises(MissingParent, match="customer 99 does not exist"):
        Order.objects.create(id=8, user_id="99", product_id="1", quantity=1)
    with pytest.raises(ValueError, match="expected a number but got 'one'"):
        Order.objects.create(id=8, user_id="one", product_id="1", quantity=1)
    assert_clean()


# --- Waits are bounded ----------------------------------------------------------------------


class Holder:
    """Another thread (its own connection) holding a lock until released."""

    def __init__(self, alias, take):
        self.alias, self.take = alias, take
        self.held, self.release = threading.Event(), threading.Event()
        self.pid = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            with transaction.atomic(using=self.alias):
                connection = connections[self.alias]
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_backend_pid()")
                        self.pid = cursor.fetchone()[0]
                self.take(self.alias)
                self.held.set()
                self.release.wait(60)
        finally:
            connections.close_all()

    def __enter__(self):
        self.thread.start()
        assert self.held.wait(30)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(30)


@all_databases
def test_a_delete_behind_a_writer_holding_the_guard_gives_up_with_one_line(settings):
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 0.5}
    with Holder("orders_db", lambda alias: guard.share(alias, ["users"])) as holder:
        with pytest.raises(GuardTimeout) as waited:
            deletion.delete("users", [3])
    message = str(waited.value)
    assert "\n" not in message
    assert message.startswith("waited 0.5 s for the reference guard in orders_db (")
    if holder.pid is not None:
        assert f"held by pid {holder.pid}" in message
    assert User.objects.filter(id=3).exists()
    deletion.delete("users", [3])  # once the writer is done
    assert_clean()


@all_databases
def test_an_order_save_behind_a_deleter_gives_up_with_one_line(settings):
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 0.5}
    with Holder("orders_db", lambda alias: guard.exclusive(alias, "users")):
        with pytest.raises(GuardTimeout, match="^waited 0.5 s for the reference guard"):
            Order.objects.create(id=9, user_id=1, product_id=1, quantity=1)
    assert not Order.objects.filter(id=9).exists()


@all_databases
def test_check_integrity_behind_a_held_orders_table_gives_up_or_reads_beside_it(settings):
    """PostgreSQL: a load holding the orders table (a segment, a stopped writer) makes the
    check wait at most the bound; SQLite: readers never wait for a writer."""
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 0.5}

    def hold_orders(alias):
        with connections[alias].cursor() as cursor:
            if connections[alias].vendor == "postgresql":
                cursor.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            else:
                cursor.execute("UPDATE orders SET quantity = quantity WHERE id = 1")

    with Holder("orders_db", hold_orders):
        if connections["orders_db"].vendor == "postgresql":
            with pytest.raises(GuardTimeout, match="^waited 0.5 s for a lock a writer holds"):
                check_integrity()
        else:
            assert check_integrity().ok


@all_databases
def test_an_admin_save_behind_a_deleter_answers_503_with_the_wait(settings, admin_client):
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 0.5}
    with Holder("orders_db", lambda alias: guard.exclusive(alias, "users")):
        response = admin_client.post(
            "/admin/core/order/add/",
            {"id": "9", "user_id": "1", "product_id": "1", "quantity": "1"},
        )
    assert response.status_code == 503
    assert response.context["message"].startswith("waited 0.5 s for ")
    assert "in orders_db (" in response.context["message"]
    assert not Order.objects.filter(id=9).exists()


@all_databases
def test_an_admin_delete_behind_a_load_says_it_waited(settings, admin_client):
    seed()
    settings.CROSSDB = {**settings.CROSSDB, "GUARD_TIMEOUT": 0.5}
    with Holder("orders_db", lambda alias: guard.share(alias, ["users"])):
        response = admin_client.post("/admin/core/user/3/delete/", {"post": "yes"})
    assert response.status_code == 302
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages[0].startswith(
        "Customer 3 was not deleted: waited 0.5 s for the reference guard in orders_db"
    )
    assert User.objects.filter(id=3).exists()
