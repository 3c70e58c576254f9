"""Two small model fields the domain tables share.

``IdField``: a given (not generated) 64-bit id. On SQLite it is ``integer PRIMARY KEY``, the
rowid itself, so a table keeps one B-tree instead of a rowid tree plus an index on
``bigint PRIMARY KEY``; PostgreSQL keeps ``bigint``.

``ComparisonKey``: the form in which a text column is compared for uniqueness (an email,
NFKC-normalised and case-folded in Python), stored in its own column with a unique index.
Python computes it, so SQLite's ASCII-only ``lower()`` and PostgreSQL's collation-dependent
one never decide whether two rows clash; the loader, the admin, the ORM and both backends
use the same key. It is filled on every ``save()``, ``create()`` and ``bulk_create()``.
"""

from django.db import models
from django.utils.functional import cached_property
from django.utils.module_loading import import_string


class IdField(models.BigIntegerField):
    """A 64-bit id; the rowid on SQLite."""

    def db_type(self, connection):
        if connection.vendor == "sqlite":
            return "integer"
        return super().db_type(connection)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "core.fields.IdField", args, kwargs


class ComparisonKey(models.CharField):
    """The normalised form of another field (``source``), kept unique by the database."""

    def __init__(self, source=None, normalize="core.validation.email_key", **kwargs):
        self.source = source
        self.normalize_path = normalize
        kwargs.setdefault("editable", False)
        super().__init__(**kwargs)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        kwargs["source"] = self.source
        kwargs["normalize"] = self.normalize_path
        kwargs.pop("editable", None)
        return name, "core.fields.ComparisonKey", args, kwargs

    @cached_property
    def normalize(self):
        """The function that computes the key (imported once: a load calls it per row)."""
        return import_string(self.normalize_path)

    def pre_save(self, model_instance, add):
        """Compute the key from the source field, so no write path can store a stale one."""
        source = getattr(model_instance, self.source)
        value = None if source is None else self.normalize(source)
        setattr(model_instance, self.attname, value)
        return value
