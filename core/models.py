"""Users, products and orders, each in its own database (see ``core.routers``).

Django has no foreign keys across databases, so ``Order.user_id`` and ``Order.product_id``
are plain integers. ``insert_data`` and the safe deletes in ``core.integrity`` keep them
true; ``Order.user`` and ``Order.product`` fetch the rows from their own databases.
The constraints here are a backstop for writes that bypass ``core.validation``
(the shell, a second process): the validator gives the readable reasons.
"""

from functools import cached_property

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Length, Lower, Trim
from django.db.models.lookups import GreaterThan

from core import validation


class User(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=254)

    class Meta:
        db_table = "users"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="users_email_unique_ci"),
            models.CheckConstraint(
                condition=GreaterThan(Length(Trim("name")), 0), name="users_name_not_blank"
            ),
            models.CheckConstraint(
                condition=models.Q(email__contains="@"), name="users_email_has_at"
            ),
        ]

    def __str__(self):
        return f"{self.name} <{self.email}>"

    def clean(self):
        raise_for(validation.check_user(self.pk, self.name, self.email))


class Product(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)

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

    def clean(self):
        raise_for(validation.check_product(self.pk, self.name, self.price))


class Order(models.Model):
    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField(db_index=True)
    product_id = models.BigIntegerField(db_index=True)
    quantity = models.IntegerField()

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

    def clean(self):
        problems = validation.check_order(self.pk, self.user_id, self.product_id, self.quantity)
        if not problems:
            problems = validation.parent_problems(
                self.user_id,
                self.product_id,
                user_exists=User.objects.filter(pk=self.user_id).exists(),
                product_exists=Product.objects.filter(pk=self.product_id).exists(),
            )
        raise_for(problems)


class LoadRun(models.Model):
    """One ``insert_data`` run, kept in ``default`` so the overview page can chart it."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    source = models.CharField(max_length=500)
    summary = models.JSONField()

    class Meta:
        db_table = "load_runs"
        ordering = ["-started_at"]

    def __str__(self):
        return f"{self.source} at {self.started_at:%Y-%m-%d %H:%M:%S}"


def raise_for(problems):
    """Turn validation problems into a Django ValidationError keyed by field."""
    if problems:
        errors = {}
        for problem in problems:
            errors.setdefault(problem.field or "__all__", []).append(problem.message)
        raise ValidationError(errors)
