"""A shelf (UUID key) and its items (text key, declared last), in two databases."""

from crossdb.fields import CASCADE, PROTECT, CrossDatabaseReference
from crossdb.models import GuardedModel
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Shelf(GuardedModel):
    id = models.UUIDField(primary_key=True)
    label = models.CharField(max_length=40)
    opened = models.DateField()
    heated = models.BooleanField(default=False)

    class Meta:
        db_table = "shelves"
        ordering = ["label"]

    def __str__(self):
        return self.label


class Item(GuardedModel):
    shelf = CrossDatabaseReference("kinds.Shelf", on_delete=CASCADE)
    # a second, optional reference to the same parent table (the shop's tables are left
    # alone, so the other tests see no new child of theirs)
    spare = CrossDatabaseReference("kinds.Shelf", on_delete=PROTECT, null=True)
    weight = models.FloatField(validators=[MinValueValidator(0), MaxValueValidator(1000)])
    fragile = models.BooleanField()
    added = models.DateTimeField()
    expires = models.DateField(null=True)
    serial = models.UUIDField(null=True)
    note = models.TextField(blank=True)
    count = models.IntegerField(default=1)
    code = models.CharField(primary_key=True, max_length=12)  # the key, last of the model

    class Meta:
        db_table = "items"
        ordering = ["code"]

    def __str__(self):
        return self.code
