"""The three loadable tables, in the order their rows must be committed (parents first)."""

from core.models import Order, Product, User
from core.routers import database_for

MODELS = {"users": User, "products": Product, "orders": Order}
TABLES = tuple(MODELS)  # users and products before the orders that name them
PARENT_TABLES = ("users", "products")


def fields(table):
    """Return the field names of table in column order, taken from the model."""
    return tuple(f.attname for f in MODELS[table]._meta.concrete_fields)


def alias(table):
    return database_for(MODELS[table])
