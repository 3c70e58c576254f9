"""Each table in the admin, read from and written to its own database by crossdb's admins:
``ParentAdmin`` for the rows others name (child counts, deletes that say what goes with a
row), ``ReferencingAdmin`` for the rows that name others (linked columns, reference checks);
a loan is both."""

from crossdb.admin.parents import ParentAdmin
from crossdb.admin.referencing import ReferencingAdmin
from django.contrib import admin

from library.models import Book, Loan, Member, Review


@admin.register(Member)
class MemberAdmin(ParentAdmin):
    search_fields = ("name",)


@admin.register(Book)
class BookAdmin(ParentAdmin):
    search_fields = ("title", "author")


@admin.register(Loan)
class LoanAdmin(ParentAdmin, ReferencingAdmin):
    list_filter = ("returned",)


@admin.register(Review)
class ReviewAdmin(ReferencingAdmin):
    pass


admin.site.site_header = "Library administration"
