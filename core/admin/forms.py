"""Admin forms whose rules and messages all come from ``core.validation``, as for
``insert_data``; the checks that need other rows (unique email, existing user and product)
run in the same pass, so a form shows every problem at once."""

from django import forms

from core import tables, validation
from core.lookups import missing_ids
from core.models import User
from core.routers import database_for


class ValidatedForm(forms.ModelForm):
    """A ModelForm whose rules and messages all come from ``core.validation``.

    Django's form and model fields would check types first, in their own words, and the
    model's clean() would then repeat the same problem in ours. So every field is plain
    text here, the row is cleaned by the same function as a row of ``insert_data``, and
    the model step (``Order.clean()``'s existence checks, primary key uniqueness) runs only
    on a row that passed.
    """

    table = None  # "users", "products" or "orders"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, field in list(self.fields.items()):
            self.fields[name] = forms.CharField(
                label=field.label,
                help_text=field.help_text,
                required=False,  # "name is required" comes from core.validation
                strip=False,  # so does trimming
                widget=forms.TextInput(attrs={"class": "vTextField"}),
            )

    def clean(self):
        cleaned_data = super().clean()
        names = tables.fields(self.table)
        raw = tuple(
            cleaned_data.get(n) if n in self.fields else getattr(self.instance, n) for n in names
        )
        values, problems = tables.spec(self.table).clean(raw)
        for problem in problems:
            self.add_error(problem.field if problem.field in self.fields else None, problem.message)
        for name, value in zip(names, values, strict=True):
            if name in cleaned_data and value is not None:
                cleaned_data[name] = value
        self.check_other_rows(cleaned_data, valid=set(names) - {p.field for p in problems})
        return cleaned_data

    def check_other_rows(self, cleaned_data, valid):
        """Add problems that need other rows of the database, for the fields in valid."""

    def _post_clean(self):
        # The problems core.validation found are on the form already; Model.full_clean()
        # would report each again, in Django's words and then in ours.
        if not self._errors:
            super()._post_clean()


class UserForm(ValidatedForm):
    table = "users"

    def check_other_rows(self, cleaned_data, valid):
        """Refuse an email another user has, in the words ``insert_data`` uses."""
        if "email" not in valid:
            return
        email = cleaned_data["email"]
        pk = cleaned_data.get("id", self.instance.pk)
        owner = (
            User.objects.using(database_for(User))
            .filter(email_key=validation.email_key(email))
            .exclude(pk=pk)
            .values_list("pk", flat=True)
            .first()
        )
        if owner is not None:
            self.add_error(
                "email", f"email {validation.shown(email)} is already used by user {owner}"
            )


class ProductForm(ValidatedForm):
    table = "products"


class OrderForm(ValidatedForm):
    table = "orders"

    def check_other_rows(self, cleaned_data, valid):
        """Say which of the row's parents do not exist, with its other problems."""
        for reference in tables.spec(self.table).references:
            pk = cleaned_data.get(reference.field)
            if reference.field in valid and not missing_ids(reference.parent, [pk]) == set():
                problem = validation.parent_problem(reference.field, reference.noun, pk)
                self.add_error(problem.field, problem.message)
