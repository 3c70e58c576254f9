"""Reviews: each names a user and a product in their own databases."""

from crossdb.fields import CASCADE, PROTECT, CrossDatabaseReference, IdField
from crossdb.models import GuardedModel
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Review(GuardedModel):
    id = IdField(primary_key=True)
    user_id = CrossDatabaseReference("core.User", on_delete=CASCADE)
    product_id = CrossDatabaseReference("core.Product", on_delete=PROTECT)
    rating = models.IntegerField(validators=[MinValueValidator(1), MaxValueValidator(5)])

    class Meta:
        db_table = "reviews"
        ordering = ["id"]

    def __str__(self):
        return (
            f"review {self.pk}: user {self.user_id} rates product {self.product_id} {self.rating}"
        )
