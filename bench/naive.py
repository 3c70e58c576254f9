"""The approach many projects use: a thread pool calling Model.objects.create() per row.

The users and products the orders name are stored first, outside the timed loop: the
reference guard refuses an order whose parents do not exist.
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import django

USERS, PRODUCTS = 1000, 100


def main(count):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    django.setup()
    from django.db import connections

    from core.models import Order, Product, User

    User.objects.bulk_create(
        User(id=i, name=f"user {i}", email=f"user{i}@example.com") for i in range(1, USERS + 1)
    )
    Product.objects.bulk_create(
        Product(id=i, name=f"product {i}", price=Decimal("1.00")) for i in range(1, PRODUCTS + 1)
    )
    connections.close_all()

    def create(i):
        try:
            Order.objects.create(
                id=i, user_id=1 + i % USERS, product_id=1 + i % PRODUCTS, quantity=1
            )
        finally:
            connections.close_all()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(1, count + 1)))
    print(time.perf_counter() - started)


if __name__ == "__main__":
    main(int(sys.argv[1]))
