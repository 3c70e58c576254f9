"""A lending library in four databases: members, books, loans and reviews.

Django has no foreign keys across databases; each reference is a ``CrossDatabaseReference``
column declaring what it names and what a delete of that row does, and crossdb derives the
rest (the loader's checks, the guard, ``check_integrity``, the deletes, the admin):

* a loan names its member and its book (``PROTECT``: neither goes while it is on loan);
* a review names its book (``CASCADE``: a withdrawn book takes its reviews with it) and,
  optionally, the loan it was written after (``CASCADE``, ``null=True``).
"""

from crossdb.fields import CASCADE, PROTECT, CrossDatabaseReference, IdField
from crossdb.models import GuardedModel
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Member(GuardedModel):
    id = models.UUIDField(primary_key=True)
    name = models.CharField(max_length=200)
    joined = models.DateField()

    class Meta:
        db_table = "members"
        ordering = ["name"]

    def __str__(self):
        return self.name


class Book(GuardedModel):
    isbn = models.CharField(primary_key=True, max_length=13)
    title = models.CharField(max_length=300)
    author = models.CharField(max_length=200)
    year = models.IntegerField(validators=[MinValueValidator(1450), MaxValueValidator(2100)])

    class Meta:
        db_table = "books"
        ordering = ["title"]

    def __str__(self):
        return f"{self.title} ({self.author})"


class Loan(GuardedModel):
    id = IdField(primary_key=True)
    member = CrossDatabaseReference("library.Member", on_delete=PROTECT)
    book = CrossDatabaseReference("library.Book", on_delete=PROTECT)
    lent_on = models.DateField()
    due_on = models.DateField()
    returned = models.BooleanField(default=False)

    class Meta:
        db_table = "loans"
        ordering = ["-lent_on", "id"]

    def __str__(self):
        return f"loan {self.pk}: book {self.book} to member {self.member}"


class Review(GuardedModel):
    id = IdField(primary_key=True)
    book = CrossDatabaseReference("library.Book", on_delete=CASCADE)
    loan = CrossDatabaseReference("library.Loan", on_delete=CASCADE, null=True)
    rating = models.IntegerField(validators=[MinValueValidator(1), MaxValueValidator(5)])
    text = models.TextField(blank=True)
    written_at = models.DateTimeField()

    class Meta:
        db_table = "reviews"
        ordering = ["-written_at"]

    def __str__(self):
        return f"review {self.pk}: {self.book} {self.rating}/5"
