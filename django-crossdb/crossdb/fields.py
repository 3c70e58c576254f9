"""The model fields crossdb adds: references across databases, and the fields they need.

``CrossDatabaseReference``: Django refuses relations between databases, so a reference is a
plain column that knows what it points at::

    class Loan(GuardedModel):
        member = CrossDatabaseReference("library.Member", on_delete=PROTECT)

Everything else derives from these declarations (``crossdb.registry`` reads them): the order
in which the loader commits tables (parents first), the reference checks of the validator
and of ``check_integrity``, what a delete of a parent does (``crossdb.deletion``), and the
guard that keeps every writer from committing an orphan (``crossdb.guard``).

* ``PROTECT``: deleting a parent that still has children is refused.
* ``CASCADE``: deleting a parent deletes its children first (committed before the parent).

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

PROTECT = "protect"
CASCADE = "cascade"
ON_DELETE = (PROTECT, CASCADE)


class CrossDatabaseReference(models.BigIntegerField):
    """The id of a row of ``to`` ("app_label.ModelName"), which may live in another database."""

    description = "Id of a row in another database"

    def __init__(self, to=None, *, on_delete=None, **kwargs):
        if on_delete not in ON_DELETE:
            raise ValueError(f"on_delete must be PROTECT or CASCADE (got {on_delete!r})")
        self.to = to
        self.on_delete = on_delete
        kwargs.setdefault("db_index", True)  # deletes and integrity checks look children up
        super().__init__(**kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs["to"] = self.to
        kwargs["on_delete"] = self.on_delete
        if kwargs.get("db_index") is True:
            del kwargs["db_index"]
        return name, "crossdb.fields.CrossDatabaseReference", args, kwargs

    @property
    def target(self):
        """The referenced model class, from the same app registry as the model holding the
        reference (a migration's historical models point at historical models)."""
        return self.model._meta.apps.get_model(self.to)

    def target_or_none(self):
        """The referenced model class, or None when ``to`` names no installed model (a
        misconfiguration ``crossdb.checks`` reports)."""
        try:
            return self.target
        except (LookupError, ValueError):
            return None


def references_of(model):
    """Return the CrossDatabaseReference fields of model, in field order."""
    return [f for f in model._meta.concrete_fields if isinstance(f, CrossDatabaseReference)]


class IdField(models.BigIntegerField):
    """A 64-bit id; the rowid on SQLite."""

    def db_type(self, connection):
        if connection.vendor == "sqlite":
            return "integer"
        return super().db_type(connection)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "crossdb.fields.IdField", args, kwargs


class ComparisonKey(models.CharField):
    """The normalised form of another field (``source``), kept unique by the database."""

    def __init__(self, source=None, normalize="crossdb.rules.email_key", **kwargs):
        self.source = source
        self.normalize_path = normalize
        kwargs.setdefault("editable", False)
        super().__init__(**kwargs)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        kwargs["source"] = self.source
        kwargs["normalize"] = self.normalize_path
        kwargs.pop("editable", None)
        return name, "crossdb.fields.ComparisonKey", args, kwargs

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
