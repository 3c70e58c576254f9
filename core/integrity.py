"""Cross-database integrity: check it, and delete parents without breaking it.

Django cannot enforce ``Order.user_id`` and ``Order.product_id`` across databases, so this
module is where the promise is kept and verified.

``check_integrity()`` streams every order in id order, ``batch_size`` at a time (keyset
pagination: ``WHERE id > last ORDER BY id LIMIT n``, so memory stays bounded and no batch
gets slower as the table grows), looks up the batch's users and products with one ``IN``
query per database (``core.writers.existing_ids``), and runs ``PRAGMA integrity_check`` on
every SQLite file. Orders are read before their parents: the loader commits parents first,
so an order seen here always has its parents committed already, and a concurrent load
cannot produce a false orphan. A concurrent safe delete can (order read, then order and
parent deleted), so every orphan found is looked up again before it is reported.

``delete_parent()`` is the one safe delete, used by ``manage.py delete_row`` and the admin.
It refuses a parent that still has orders (``HasOrders``) unless ``with_orders=True``; then
it commits the deletion of the orders first and deletes the parent afterwards, so a crash
in between leaves a parent without orders, never an order without a parent.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Count

from core import tables
from core.models import Order
from core.tables import MODELS, PARENT_TABLES
from core.writers import existing_ids, query_chunks

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_KEEP = 100  # orphans kept in the result; the count covers all of them
OK = "ok"

# The column of Order naming each parent table.
PARENT_COLUMNS = {"users": "user_id", "products": "product_id"}


class HasOrders(Exception):
    """A user or product still has orders, so deleting it would orphan them."""

    def __init__(self, table, pk, count):
        self.table, self.pk, self.count = table, pk, count
        noun, them = ("order", "it") if count == 1 else ("orders", "them")
        super().__init__(
            f"{_singular(table)} {pk} has {count} {noun}; delete {them} first or pass --with-orders"
        )


class DeleteRaced(Exception):
    """Orders for the parent kept appearing while it was being deleted (a load is running)."""


@dataclass(frozen=True)
class Orphan:
    """An order naming a user or product that is not stored."""

    order_id: int
    user_id: int
    product_id: int
    missing_user: bool
    missing_product: bool

    def __str__(self):
        missing = [
            f"user {self.user_id}" if self.missing_user else None,
            f"product {self.product_id}" if self.missing_product else None,
        ]
        return f"order {self.order_id}: {' and '.join(m for m in missing if m)} not found"

    def as_dict(self):
        return {
            "order_id": self.order_id,
            "user_id": self.user_id,
            "product_id": self.product_id,
            "missing_user": self.missing_user,
            "missing_product": self.missing_product,
        }


@dataclass
class IntegrityResult:
    """Totals of one check: orders seen, orphans (count and the first few), file checks."""

    orders_checked: int = 0
    orphan_count: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    databases: dict[str, str] = field(default_factory=dict)  # alias -> "ok" or the problem
    scan_error: str | None = None  # the orders could not all be read (a damaged file)

    @property
    def corrupt(self):
        """Aliases whose integrity check did not say ok (skipped ones are not corrupt)."""
        return [a for a, s in self.databases.items() if s != OK and not s.startswith("skipped")]

    @property
    def ok(self):
        return self.orphan_count == 0 and not self.corrupt and self.scan_error is None

    def as_dict(self):
        return {
            "ok": self.ok,
            "orders_checked": self.orders_checked,
            "orphan_count": self.orphan_count,
            "orphans": [o.as_dict() for o in self.orphans],
            "orphans_listed": len(self.orphans),
            "databases": dict(self.databases),
            "corrupt": self.corrupt,
            "scan_error": self.scan_error,
        }


def check_integrity(*, batch_size=DEFAULT_BATCH_SIZE, keep=DEFAULT_KEEP, progress=None):
    """Check every order's user and product, and every SQLite file; return an IntegrityResult.

    progress, if given, is called with the number of orders checked after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = IntegrityResult()
    for alias in settings.DATABASES:
        result.databases[alias] = file_check(alias)
    try:
        for batch in order_batches(batch_size):
            result.orders_checked += len(batch)
            orphans = _confirmed(_orphans_in(batch))
            result.orphan_count += len(orphans)
            result.orphans.extend(orphans[: max(keep - len(result.orphans), 0)])
            if progress:
                progress(result.orders_checked)
    except DatabaseError as exc:  # a damaged file: report how far the scan got, not a crash
        result.scan_error = f"stopped after {result.orders_checked:,} orders: {exc}"
    return result


def order_batches(batch_size):
    """Yield lists of (id, user_id, product_id), in id order, batch_size at a time."""
    alias = tables.alias("orders")
    last = 0
    while True:
        batch = list(
            Order.objects.using(alias)
            .filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", "user_id", "product_id")[:batch_size]
        )
        if not batch:
            return
        yield batch
        last = batch[-1][0]


def _orphans_in(batch):
    users = existing_ids("users", {u for _o, u, _p in batch})
    products = existing_ids("products", {p for _o, _u, p in batch})
    return [
        Orphan(order, user, product, user not in users, product not in products)
        for order, user, product in batch
        if user not in users or product not in products
    ]


def _confirmed(orphans):
    """Keep the orphans whose order is still stored and still misses a parent.

    A safe delete running beside the check removes the order before its parent; an order
    read before that delete and checked after it would otherwise be a false orphan.
    """
    if not orphans:
        return []
    alias = tables.alias("orders")
    still = {
        o[0]: o
        for chunk in query_chunks(connections[alias], [o.order_id for o in orphans])
        for o in Order.objects.using(alias)
        .filter(pk__in=chunk)
        .values_list("pk", "user_id", "product_id")
    }
    return _orphans_in([still[o.order_id] for o in orphans if o.order_id in still])


def file_check(alias):
    """Return "ok" or what ``PRAGMA integrity_check`` (SQLite only) found wrong with alias."""
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return f"skipped ({connection.vendor}: the server checks its own files)"
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA integrity_check")
            lines = [row[0] for row in cursor.fetchall()]
    except DatabaseError as exc:
        return f"cannot check: {exc}"
    return OK if lines == [OK] else "; ".join(lines[:10])


def count_orders_for(table, ids):
    """Return {id: number of orders} for the given user or product ids (absent: no orders)."""
    column = PARENT_COLUMNS[_table_name(table)]
    alias = tables.alias("orders")
    counts = {}
    for chunk in query_chunks(connections[alias], ids):
        counts.update(
            Order.objects.using(alias)
            .filter(**{f"{column}__in": chunk})
            .order_by()
            .values_list(column)
            .annotate(n=Count("pk"))
            .values_list(column, "n")
        )
    return counts


def delete_parent(model_or_table, pk, with_orders=False, *, attempts=5):
    """Delete one user or product; return (orders_deleted, parent_deleted).

    Raises HasOrders if it has orders and with_orders is false. With with_orders, the
    orders are deleted and committed first, then the parent, so a crash in between never
    leaves an orphan.

    Concurrent loads: the parent is deleted inside a transaction on the orders database
    that first checks no order names it. On SQLite that transaction is ``BEGIN IMMEDIATE``,
    so order writers wait until the parent is gone; if orders appeared since they were
    deleted, they are deleted (or refused) again before the parent. What remains is a load
    that validated an order against this parent before the delete and commits it after:
    the loader checks references at validation time, so that order becomes an orphan and
    ``check_integrity`` reports it. Do not delete parents a running load still refers to.
    On PostgreSQL the orders transaction does not lock the table, so the window is wider.
    """
    table = _table_name(model_or_table)
    column = PARENT_COLUMNS[table]
    orders_alias, parent_alias = tables.alias("orders"), tables.alias(table)
    orders_deleted = 0
    for _attempt in range(attempts):
        with transaction.atomic(using=orders_alias):
            orders = Order.objects.using(orders_alias).filter(**{column: pk})
            count = orders.count()
            if count:
                if not with_orders:
                    raise HasOrders(table, pk, count)
                orders_deleted += orders.delete()[0]
                continue  # leaving the block commits the orders' deletion first
            # No order names the parent, and order writers wait for this transaction.
            with transaction.atomic(using=parent_alias):
                parent_deleted = MODELS[table].objects.using(parent_alias).filter(pk=pk).delete()
        return orders_deleted, parent_deleted[0] > 0
    raise DeleteRaced(
        f"{_singular(table)} {pk}: new orders kept arriving while deleting it; "
        "stop the running load and try again"
    )


def _table_name(model_or_table):
    """Accept "users", "products", a model class or an instance; return the table name."""
    if isinstance(model_or_table, str):
        name = model_or_table
    else:
        name = next((t for t, m in MODELS.items() if isinstance(model_or_table, m)), None)
        name = name or next((t for t, m in MODELS.items() if model_or_table is m), None)
    if name not in PARENT_TABLES:
        raise ValueError(f"can only delete users or products safely (got {model_or_table!r})")
    return name


def _singular(table):
    return table.removesuffix("s")
