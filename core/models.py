"""Users, products and orders, each in its own database (see ``crossdb.routers``).

Django has no foreign keys across databases, so ``Order.user_id`` and ``Order.product_id``
are ``CrossDatabaseReference`` columns: plain integers that declare what they point at and
what a delete of the parent does. Everything that keeps those links true reads the
declarations (``crossdb.registry``): the loader, the guard that every save, create, update and
delete of a ``GuardedModel`` goes through (``crossdb.orm``, ``crossdb.guard``),
``check_integrity``, the safe deletes and the admin. The CHECK constraints are a backstop
for writes that bypass ``crossdb.rules`` (raw SQL, another program).
"""

from functools import cached_property

from crossdb.fields import CASCADE, PROTECT, ComparisonKey, CrossDatabaseReference, IdField  # noqa: F401
from crossdb.models import GuardedModel
from crossdb.rules import Positive
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Length, Trim
from django.db.models.lookups import GreaterThan


class User(GuardedModel):
    id = IdField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(max_length=254)
    # case folding can lengthen an address (ß -> ss), so the key has room beyond 254
    email_key = ComparisonKey("email", max_length=1024, unique=True)

    class Meta:
        db_table = "users"
        ordering = ["id"]
        # Django's own auth app has "Users" too; these are the shop's.
        verbose_name = "customer"
        verbose_name_plural = "customers"
        constraints = [
            models.CheckConstraint(
                condition=GreaterThan(Length(Trim("name")), 0), name="users_name_not_blank"
            ),
            models.CheckConstraint(
                condition=models.Q(email__contains="@"), name="users_email_has_at"
            ),
        ]

    def __str__(self):
        return f"{self.name} <{self.email}>"


class Product(GuardedModel):
    id = IdField(primary_key=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2, validators=[Positive()])

    class Meta:
        db_table = "products"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gt=0), name="products_price_gt_0"),
            models.CheckConstraint(
                condition=GreaterThan(Length(Trim("name")), 0), name="products_name_not_blank"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.price})"


class Order(GuardedModel):
    id = IdField(primary_key=True)
    user_id = CrossDatabaseReference("core.User", on_delete=PROTECT)
    product_id = CrossDatabaseReference("core.Product", on_delete=PROTECT)
    quantity = models.IntegerField(validators=[MinValueValidator(1)])

    class Meta:
        db_table = "orders"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quantity__gte=1), name="orders_quantity_gte_1"
            ),
        ]

    def __str__(self):
        return f"order {self.pk}: user {self.user_id}, product {self.product_id} x{self.quantity}"

    @cached_property
    def user(self):
        """The ordering user, read from users_db (None if it is missing)."""
        return User.objects.filter(pk=self.user_id).first()

    @cached_property
    def product(self):
        """The ordered product, read from products_db (None if it is missing)."""
        return Product.objects.filter(pk=self.product_id).first()
