"""Generated rows for any registry: ``insert_data --<table> N`` when a project names no
generator of its own (``CROSSDB["GENERATOR"]``, a callable taking the counts per table and
a seed, as this module's ``generated`` does).

Every value is drawn from what the model declares, so it passes the table's rules: keys of
the key's type (whole numbers from 1001, UUIDs, text), references to rows generated for
their parent table (a nullable one is left empty now and then), numbers within the field's
range and validators, dates, moments with their time zone, booleans, UUIDs, and text within
its length (an email where the field is one, unique where the field or a comparison key
asks). The same seed gives the same rows, so running the same command twice stores nothing
twice. Rows carry no line (``None``).
"""

from __future__ import annotations

import datetime
import math
import random
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, cast

from django.db import models

from crossdb import registry, rules
from crossdb.fields import ComparisonKey, CrossDatabaseReference
from crossdb.loading.rows import Expected, SourceRow
from crossdb.sources.reading import SourceError

FIRST_ID = 1001
WORDS = (
    "amber birch cedar delta ember fjord grove harbor iris juniper kestrel lumen maple "
    "nectar orchid pebble quartz raven sable tundra umber violet willow xenon yarrow zephyr"
).split()
EPOCH = datetime.date(2024, 1, 1)


def generated(counts: Mapping[str, int], seed: int = 0) -> GeneratedSource:
    """The generator crossdb uses by default: counts per table, a seed."""
    return GeneratedSource(counts, seed)


class GeneratedSource:
    """Rows made up for every table with a count, parents before children."""

    def __init__(self, counts: Mapping[str, int], seed: int = 0) -> None:
        specs = registry.specs()
        for table, count in counts.items():
            if table not in specs:
                raise SourceError(f"--{table}: no such table (known: {', '.join(specs)})")
            if count < 0:
                raise SourceError(f"--{table} must be 0 or more (got {count})")
        for table, count in counts.items():
            for reference in specs[table].references:
                field = cast(models.Field, specs[table].model._meta.get_field(reference.field))
                if count and not field.null and not counts.get(reference.parent):
                    raise SourceError(
                        f"--{table} needs --{reference.parent}: its {reference.field} names "
                        f"{specs[reference.parent].name}"
                    )
        self.counts = {t: n for t, n in counts.items() if n}
        self.seed = seed
        given = ", ".join(f"{t}={n}" for t, n in self.counts.items())
        self.label = f"generated ({given}, seed={seed})"

    def check(self) -> None:
        pass

    def warnings(self) -> list[str]:
        return []

    def input_paths(self) -> list[Any]:
        return []

    def tables(self) -> list[str]:
        return [t for t in registry.tables() if t in self.counts]

    def expected(self, table: str) -> Expected:
        return Expected(self.counts.get(table, 0))

    def keys(self, table: str) -> list[Any]:
        """The keys of table's generated rows, in order (what children name)."""
        rng = random.Random(f"{self.seed}:{table}:keys")
        key = registry.spec(table).model._meta.pk
        return [_key(key, i, rng) for i in range(self.counts.get(table, 0))]

    def rows(self, table: str) -> Iterator[SourceRow]:
        spec = registry.spec(table)
        meta = spec.model._meta
        rng = random.Random(f"{self.seed}:{table}:rows")
        unique = {k.source for k in spec.keys} | {
            f for f in spec.fields if cast(models.Field, meta.get_field(f)).unique
        }
        parents = {
            r.field: self.keys(r.parent) for r in spec.references if self.counts.get(r.parent)
        }
        for i, key in enumerate(self.keys(table)):
            values = [key]
            for name in spec.fields[1:]:
                field = meta.get_field(name)
                values.append(_value(field, i, rng, name in unique, parents.get(name)))
            yield None, tuple(values)


def _key(key: models.Field, i: int, rng: random.Random) -> Any:
    if key.get_internal_type() in rules.INTEGER_KINDS:
        return FIRST_ID + i
    if isinstance(key, models.UUIDField):
        return uuid.UUID(int=rng.getrandbits(128), version=4)
    width = max(1, min(key.max_length or 12, 12))
    return f"k{i:0{width - 1}d}"[-width:] if width > 1 else "k"


def _value(
    field: Any, i: int, rng: random.Random, unique: bool, parent_keys: list[Any] | None
) -> Any:
    """One value for field in row i (unique: it must differ from every other row's)."""
    if isinstance(field, ComparisonKey):
        return None  # computed from its source
    if isinstance(field, CrossDatabaseReference):
        if parent_keys is None or (field.null and rng.random() < 0.1):
            return None
        return rng.choice(parent_keys)
    if isinstance(field, models.EmailField):
        return f"{rng.choice(WORDS)}.{i}@example.org"
    if isinstance(field, (models.CharField, models.TextField)):
        text = f"{rng.choice(WORDS).title()} {rng.choice(WORDS)}"
        if unique:
            text = f"{text} {i}"
        return text[: field.max_length] if field.max_length else text
    if isinstance(field, models.BooleanField):
        return rng.random() < 0.5
    if isinstance(field, models.DateTimeField):
        return datetime.datetime.combine(
            EPOCH, datetime.time(), tzinfo=datetime.UTC
        ) + datetime.timedelta(seconds=rng.randrange(365 * 86400))
    if isinstance(field, models.DateField):
        return EPOCH + datetime.timedelta(days=rng.randrange(365))
    if isinstance(field, models.UUIDField):
        return uuid.UUID(int=rng.getrandbits(128), version=4)
    if isinstance(field, models.DecimalField):
        least, most = rules.field_bounds(
            field, Decimal(0), Decimal(10) ** (field.max_digits - field.decimal_places)
        )
        if any(isinstance(v, rules.Positive) for v in field.validators):
            least = max(least, Decimal(1))
        top = min(most, least + 1000)
        cents = rng.randrange(int(least * 100), int(top * 100) + 1)
        return (Decimal(cents) / 100).quantize(Decimal(1).scaleb(-field.decimal_places))
    if isinstance(field, models.FloatField):
        start, end = rules.field_bounds(field, 0.0, 1000.0)
        return round(rng.uniform(start, end if math.isfinite(end) else start + 1000), 3)
    kind = field.get_internal_type()
    if kind in rules.INT_RANGES or kind in ("BigIntegerField", "PositiveBigIntegerField"):
        low, high = rules.INT_RANGES.get(kind, (-(2**63), 2**63 - 1))
        low, high = rules.field_bounds(field, max(int(low), 0), int(high))
        return (low + i) if unique else rng.randint(low, min(high, low + 99))
    raise SourceError(f"{field.model.__name__}.{field.attname}: no generator for {kind}")
