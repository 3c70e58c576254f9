"""Deterministic synthetic rows, generated as fast as the CSV reader reads them.

Ids start at ``FIRST_ID`` (1001), clear of the demo data's ids 1-10, so ``make demo``
followed by a synthetic load reports no conflicts; the same seed gives the same rows, so
running the same command twice stores nothing twice. Rows carry no line (``None``).

Orders are generated a chunk at a time from ``randbytes``, as one array per chunk
(``crossdb.loading.columns.Block``, what ``runs()`` gives the loader), with no Python step per row;
``rows()`` gives the same orders as tuples.
"""

import random
from decimal import Decimal
from itertools import chain

import numpy as np
from crossdb import registry
from crossdb.loading import columns
from crossdb.loading.rows import Expected
from crossdb.sources.reading import SourceError

FIRST_ID = 1001
CHUNK = 50_000  # rows generated at once: large enough to amortise, small enough to stream
QUANTITY_MAX = 5
# byte -> quantity 1..5; 256 % 5 == 1, so 1 is drawn 52 times in 256 instead of 51.2
QUANTITIES = bytes(b % QUANTITY_MAX + 1 for b in range(256))

FIRST_NAMES = (
    "Alice Bob Charlie David Eve Frank Grace Henry Ivy Jack Karen Liam Mia Noah Olivia "
    "Paul Quinn Rosa Sam Tara Umar Vera Will Xena Yusuf Zoe"
).split()
LAST_NAMES = (
    "Smith Jones Garcia Miller Davis Martin Lopez Clark Lewis Walker Young King Wright "
    "Scott Green Baker Adams Nelson Hill Ramirez Campbell Mitchell Roberts Carter"
).split()
PRODUCT_ADJECTIVES = "Compact Deluxe Ergonomic Portable Smart Wireless Classic Pro".split()
PRODUCT_NOUNS = (
    "Laptop Phone Headphones Monitor Keyboard Mouse Watch Chair Speaker Camera Tablet Lamp"
).split()


def _ids_below(rng, n):
    """CHUNK ids in FIRST_ID .. FIRST_ID + n - 1, from 32-bit little-endian random numbers
    (the same on every machine for one rng state; bias n / 2**32, none worth a rejection
    loop)."""
    numbers = np.frombuffer(rng.randbytes(4 * CHUNK), dtype="<u4").astype(np.int64)
    return numbers % n + FIRST_ID


class SyntheticSource:
    """Realistic-looking rows generated on the fly; the same seed gives the same rows."""

    def __init__(self, users=0, products=0, orders=0, seed=0):
        for name, count in (("users", users), ("products", products), ("orders", orders)):
            if count < 0:
                raise SourceError(f"--{name} must be 0 or more (got {count})")
        if orders and not (users and products):
            raise SourceError("--orders needs --users and --products to reference")
        self.counts = {"users": users, "products": products, "orders": orders}
        self.seed = seed
        self.label = f"synthetic (users={users}, products={products}, orders={orders}, seed={seed})"

    def check(self):
        pass

    def warnings(self):
        return []

    def input_paths(self):
        return []

    def tables(self):
        return [t for t in registry.tables() if self.counts.get(t)]

    def expected(self, table):
        return Expected(self.counts[table], "rows")

    def rows(self, table):
        return chain.from_iterable(
            run.rows() if isinstance(run, columns.Block) else run for run in self.runs(table)
        )

    def runs(self, table):
        """One run per chunk: a list of rows, or for orders a ``crossdb.loading.columns.Block``."""
        # One generator per table, seeded from (seed, table): each table is reproducible alone.
        rng = random.Random(f"{self.seed}:{table}")
        count = self.counts[table]
        starts = range(FIRST_ID, FIRST_ID + count, CHUNK)
        make = getattr(self, f"_{table}")
        return (make(rng, s, min(CHUNK, FIRST_ID + count - s)) for s in starts)

    def _users(self, rng, start, count):
        rows = []
        for i in range(start, start + count):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            rows.append((None, (i, f"{first} {last}", f"{first}.{last}.{i}@example.com".lower())))
        return rows

    def _products(self, rng, start, count):
        rows = []
        for i in range(start, start + count):
            name = f"{rng.choice(PRODUCT_ADJECTIVES)} {rng.choice(PRODUCT_NOUNS)}"
            rows.append((None, (i, name, Decimal(rng.randrange(100, 200_000)).scaleb(-2))))
        return rows

    def _orders(self, rng, start, count):
        """One chunk of orders as one array; a short last chunk draws a whole one and keeps
        its start, so order i is the same row whatever --orders says (concurrent loads rely
        on it)."""
        users = _ids_below(rng, self.counts["users"])
        products = _ids_below(rng, self.counts["products"])
        quantities = np.frombuffer(rng.randbytes(CHUNK).translate(QUANTITIES), dtype=np.uint8)
        values = np.empty((count, 4), dtype=np.int64)
        values[:, 0] = np.arange(start, start + count)
        values[:, 1] = users[:count]
        values[:, 2] = products[:count]
        values[:, 3] = quantities[:count]
        return columns.Block(values)


def generated(counts, seed=0):
    """The generator crossdb calls for ``insert_data --users N --products N --orders N``
    (``CROSSDB["GENERATOR"]`` in ``multids/settings.py``): counts per table, a seed."""
    others = sorted(t for t, n in counts.items() if n and t not in ("users", "products", "orders"))
    if others:
        raise SourceError(
            f"--{others[0]}: the shop's generator makes users, products and orders only"
        )
    return SyntheticSource(
        counts.get("users", 0), counts.get("products", 0), counts.get("orders", 0), seed
    )
