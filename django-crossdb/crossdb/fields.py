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

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.expressions import Col
    from django.forms import Field as FormField

PROTECT = "protect"
CASCADE = "cascade"
ON_DELETE = (PROTECT, CASCADE)


AUTO_TO_PLAIN = {
    "AutoField": "IntegerField",
    "BigAutoField": "BigIntegerField",
    "SmallAutoField": "SmallIntegerField",
}


class CrossDatabaseReference(models.Field):
    """The primary key of a row of ``to`` ("app_label.ModelName"), which may live in another
    database.

    The column has the type of the target's primary key, as a ``ForeignKey``'s has: a whole
    number, a UUID or text; every conversion (a form's "7", a UUID's text, what SQLite hands
    back) is the target key's own. ``null=True`` makes the reference optional: a row naming
    no parent needs none.
    """

    description = "Key of a row in another database"

    def __init__(
        self, to: str | None = None, *, on_delete: str | None = None, **kwargs: Any
    ) -> None:
        if on_delete not in ON_DELETE:
            raise ValueError(f"on_delete must be PROTECT or CASCADE (got {on_delete!r})")
        # None only for a field declared without a target (crossdb.checks reports it).
        self.to: str = to  # type: ignore[assignment]
        self.on_delete = on_delete
        kwargs.setdefault("db_index", True)  # deletes and integrity checks look children up
        super().__init__(**kwargs)

    def deconstruct(self) -> tuple[str, str, Sequence[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        kwargs["to"] = self.to
        kwargs["on_delete"] = self.on_delete
        if kwargs.get("db_index") is True:
            del kwargs["db_index"]
        return name, "crossdb.fields.CrossDatabaseReference", args, kwargs

    @property
    def target_field(self) -> models.Field[Any, Any]:
        """The primary key field of the referenced model."""
        return self.target._meta.pk

    def get_internal_type(self) -> str:
        internal = self.target_field.get_internal_type()
        return AUTO_TO_PLAIN.get(internal, internal)

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        # Every Field has rel_db_type and get_db_converters; django-stubs declares them on
        # subclasses only.
        return self.target_field.rel_db_type(connection)  # type: ignore[attr-defined]

    def rel_db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        return self.db_type(connection)

    def get_col(self, alias: str, output_field: models.Field[Any, Any] | None = None) -> Col:
        # Read back through the target key's converters (a UUID stored as text on SQLite).
        return super().get_col(alias, output_field or self.target_field)

    def get_db_converters(self, connection: BaseDatabaseWrapper) -> list[Callable[..., Any]]:
        return self.target_field.get_db_converters(connection)  # type: ignore[attr-defined]

    def to_python(self, value: Any) -> Any:
        return self.target_field.to_python(value)

    def get_prep_value(self, value: Any) -> Any:
        return None if value is None else self.target_field.get_prep_value(value)

    def get_db_prep_value(
        self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False
    ) -> Any:
        return self.target_field.get_db_prep_value(value, connection, prepared)

    # Takes Django's form_class and choices_form_class through kwargs, to the target key's field.
    def formfield(self, **kwargs: Any) -> FormField | None:  # type: ignore[override]
        """The form field of the target key's type (a number, a UUID, text)."""
        field = self.target_field
        plain = type(field)
        if plain.__name__ in AUTO_TO_PLAIN:
            plain = getattr(models, AUTO_TO_PLAIN[plain.__name__])
        options: dict[str, Any] = {
            "null": self.null,
            "blank": self.blank,
            "verbose_name": self.verbose_name,
        }
        if isinstance(field, models.CharField):
            options["max_length"] = field.max_length
        return plain(**options).formfield(**kwargs)

    @property
    def target(self) -> type[models.Model]:
        """The referenced model class, from the same app registry as the model holding the
        reference (a migration's historical models point at historical models), else from
        the installed apps: a migration may create the table before its target's (nothing
        tells ``makemigrations`` of the dependency, unlike a ``ForeignKey``'s), and the
        column then takes the type of the key the target has now."""
        from django.apps import apps

        try:
            return self.model._meta.apps.get_model(self.to)
        except LookupError:
            if self.model._meta.apps is apps:
                raise
            return apps.get_model(self.to)

    def target_or_none(self) -> type[models.Model] | None:
        """The referenced model class, or None when ``to`` names no installed model (a
        misconfiguration ``crossdb.checks`` reports)."""
        try:
            return self.target
        except (LookupError, ValueError):
            return None


def references_of(model: type[models.Model] | models.Model) -> list[CrossDatabaseReference]:
    """Return the CrossDatabaseReference fields of model, in field order."""
    return [f for f in model._meta.concrete_fields if isinstance(f, CrossDatabaseReference)]


class IdField(models.BigIntegerField):
    """A 64-bit id; the rowid on SQLite."""

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        if connection.vendor == "sqlite":
            return "integer"
        return super().db_type(connection)

    def deconstruct(self) -> tuple[str, str, Sequence[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        return name, "crossdb.fields.IdField", args, kwargs


class ComparisonKey(models.CharField):
    """The normalised form of another field (``source``), kept unique by the database."""

    def __init__(
        self, source: str | None = None, normalize: str = "crossdb.rules.email_key", **kwargs: Any
    ) -> None:
        self.source: str = source  # type: ignore[assignment]  # required in practice, like to
        self.normalize_path = normalize
        kwargs.setdefault("editable", False)
        super().__init__(**kwargs)

    def deconstruct(self) -> tuple[str, str, Sequence[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        kwargs["source"] = self.source
        kwargs["normalize"] = self.normalize_path
        kwargs.pop("editable", None)
        return name, "crossdb.fields.ComparisonKey", args, kwargs

    @cached_property
    def normalize(self) -> Callable[[Any], Any]:
        """The function that computes the key (imported once: a load calls it per row)."""
        return import_string(self.normalize_path)

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        """Compute the key from the source field, so no write path can store a stale one."""
        source = getattr(model_instance, self.source)
        value = None if source is None else self.normalize(source)
        setattr(model_instance, self.attname, value)
        return value
