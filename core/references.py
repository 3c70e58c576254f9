"""Cross-database references, declared once on the model that holds them.

Django refuses relations between databases, so a reference is a plain integer column that
knows what it points at::

    class Order(GuardedModel):
        user_id = CrossDatabaseReference("core.User", on_delete=PROTECT)

Everything else derives from these declarations (``core.tables`` reads them): the order in
which the loader commits tables (parents first), the reference checks of the validator and
of ``check_integrity``, what a delete of a parent does (``core.deletion``), and the guard
that keeps every writer from committing an orphan (``core.guard``).

* ``PROTECT``: deleting a parent that still has children is refused.
* ``CASCADE``: deleting a parent deletes its children first (committed before the parent).
"""

from django.db import models

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
        return name, "core.references.CrossDatabaseReference", args, kwargs

    @property
    def target(self):
        """The referenced model class."""
        from django.apps import apps

        return apps.get_model(self.to)


def references_of(model):
    """Return the CrossDatabaseReference fields of model, in field order."""
    return [f for f in model._meta.concrete_fields if isinstance(f, CrossDatabaseReference)]
