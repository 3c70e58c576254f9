"""One admin form for every registered table, with the rules and words of ``insert_data``.

Everything a form checks comes from the table's spec (``crossdb.registry``): the field rules
(``crossdb.rules``), the unique comparison keys (``email_key``) and the declared references.
The checks that need other rows run in the same pass as the rules, so a form shows every
problem at once.
"""

from typing import Any, cast

from django import forms

from crossdb import registry, rules
from crossdb.lookups import missing_ids


class ValidatedForm(forms.ModelForm):
    """A ModelForm whose rules and messages all come from the table's spec.

    Django's form and model fields would check types first, in their own words, and the
    model's clean() would then repeat the same problem in ours. So every field is plain
    text here, the row is cleaned by the same function as a row of ``insert_data``, and
    the model step (primary key uniqueness) runs only on a row that passed.
    """

    refused = None  # the guard's reason, when it refused this form's save (ReferencingAdmin)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, field in list(self.fields.items()):
            self.fields[name] = forms.CharField(
                label=field.label,
                help_text=field.help_text,
                required=False,  # "name is required" comes from crossdb.rules
                strip=False,  # so does trimming
                widget=forms.TextInput(attrs={"class": "vTextField"}),
            )

    @property
    def spec(self):
        return registry.spec(self._meta.model)

    def clean(self):
        cleaned_data = cast(dict[str, Any], super().clean())  # ModelForm's: cleaned_data
        names = self.spec.fields
        raw = tuple(
            cleaned_data.get(n) if n in self.fields else getattr(self.instance, n) for n in names
        )
        row, problems = self.spec.clean(raw)
        for problem in problems:
            self.add_error(problem.field if problem.field in self.fields else None, problem.message)
        values = dict(zip(self.spec.columns, row, strict=True))
        for name in names:
            if name in cleaned_data and values[name] is not None:
                cleaned_data[name] = values[name]
        valid = set(names) - {p.field for p in problems}
        self.check_keys(values, valid)
        self.check_references(values, valid)
        if self.refused:
            self.add_error(None, self.refused)
        return cleaned_data

    def check_keys(self, values, valid):
        """Refuse a value whose comparison key another row has, in the loader's words."""
        model = self._meta.model
        stated = values.get(self.spec.pk)
        pk = stated if stated is not None else self.instance.pk
        for key in self.spec.keys:
            if key.source not in valid or values[key.column] is None:
                continue
            owner = (
                model.objects.using(self.spec.alias)
                .filter(**{key.column: values[key.column]})
                .exclude(pk=pk)
                .values_list("pk", flat=True)
                .first()
            )
            if owner is not None:
                shown = rules.shown(values[key.source])
                self.add_error(
                    key.source if key.source in self.fields else None,
                    f"{key.source} {shown} is already used by {self.spec.noun} {owner}",
                )

    def check_references(self, values, valid):
        """Say which of the row's parents do not exist, with its other problems.

        This is the friendly check; the guard checks again inside the save's transaction
        (``crossdb.guard``), and a parent deleted in between is reported by the admin's
        ``save_model`` (``ReferencingAdmin``) on this same form.
        """
        for reference in self.spec.references:
            pk = values.get(reference.field)
            if reference.field in valid and pk is not None and missing_ids(reference.parent, [pk]):
                problem = rules.parent_problem(reference.field, reference.noun, pk)
                self.add_error(
                    problem.field if problem.field in self.fields else None, problem.message
                )

    def _post_clean(self):
        # The problems crossdb.rules found are on the form already; Model.full_clean()
        # would report each again, in Django's words and then in ours.
        # _errors and _post_clean are Django's (BaseForm), missing from django-stubs.
        if not self._errors:  # type: ignore[attr-defined]
            super()._post_clean()  # type: ignore[misc]
