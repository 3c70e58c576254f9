"""The approach many projects use: a thread pool calling Model.objects.create() per row."""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import django


def main(count):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    django.setup()
    from django.db import connections

    from core.models import Order

    def create(i):
        try:
            Order.objects.create(id=i, user_id=1 + i % 1000, product_id=1 + i % 100, quantity=1)
        finally:
            connections.close_all()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(1, count + 1)))
    print(time.perf_counter() - started)


if __name__ == "__main__":
    main(int(sys.argv[1]))
