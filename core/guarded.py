"""The ORM's write paths, each through the reference guard (``core.guard``).

``GuardedModel`` is the base of every model in a reference, as parent or child: its
``save()`` runs in a transaction, so the guard a child's ``pre_save`` takes is held until
the commit; its ``delete()`` and its queryset's ``delete()`` go to ``core.deletion``;
``bulk_create()`` and a re-pointing ``update()`` check the parents inside the guard;
``update()`` refuses to change the id of a row that children name. ``loaddata`` saves raw,
which still sends ``pre_save``, so fixtures are checked too.
"""

from django.db import models as dj_models
from django.db import router, transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver

from core.guard import (
    ChangedParentKey,
    MissingParent,
    existing_parents,
    missing_parents,
    require_parents,
    share,
)


class GuardedQuerySet(dj_models.QuerySet):
    """QuerySet whose bulk writes and deletes keep cross-database references true."""

    def _table_spec(self):
        from core.tables import spec

        return spec(self.model)

    def bulk_create(self, objs, *args, **kwargs):
        table_spec = self._table_spec()
        if not table_spec.references:
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        with transaction.atomic(using=self.db):
            require_parents(table_spec, self.db, objs)
            return super().bulk_create(objs, *args, **kwargs)

    def update(self, **kwargs):
        table_spec = self._table_spec()
        pk_names = {"pk", self.model._meta.pk.name, self.model._meta.pk.attname}
        if table_spec.children and pk_names & set(kwargs):
            children = ", ".join(dict.fromkeys(r.child for r in table_spec.children))
            raise ChangedParentKey(
                f"the id of a {table_spec.noun} cannot be changed while {children} refer to it; "
                "create the new row, move its children to it, then delete the old one"
            )
        for key in table_spec.keys:  # keep a comparison key in step with its source
            if key.source in kwargs and isinstance(kwargs[key.source], str):
                kwargs[key.column] = key.normalize(kwargs[key.source])
        touched = [r for r in table_spec.references if r.field in kwargs]
        if not touched:
            return super().update(**kwargs)
        with transaction.atomic(using=self.db):
            share(self.db, tuple(r.parent for r in touched))
            for reference in touched:
                pk = kwargs[reference.field]
                if not isinstance(pk, int) or pk not in existing_parents(reference.parent, [pk]):
                    raise MissingParent(
                        f"{reference.noun} {pk} does not exist; {table_spec.name}.{reference.field}"
                        " can only be set to a stored one"
                    )
            return super().update(**kwargs)

    update.alters_data = True

    def delete(self):
        from core import deletion

        table_spec = self._table_spec()
        if not table_spec.children:
            return super().delete()
        pks = list(self.values_list("pk", flat=True))
        result = deletion.delete(table_spec.name, pks)
        return result.total, result.by_model()

    delete.alters_data = True
    delete.queryset_only = True


class GuardedModel(dj_models.Model):
    """A model whose saves and deletes go through the reference guard."""

    objects = GuardedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, using=None, **kwargs):
        """Save inside a transaction, so the guard taken by pre_save is held until commit."""
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            return super().save(*args, using=using, **kwargs)

    save.alters_data = True

    def delete(self, using=None, keep_parents=False):
        from core import deletion
        from core.tables import spec

        table_spec = spec(self)
        if not table_spec.children:
            return super().delete(using=using, keep_parents=keep_parents)
        result = deletion.delete(table_spec.name, [self.pk])
        return result.total, result.by_model()

    delete.alters_data = True

    def clean(self):
        """Apply the loader's rules and check the references, with the loader's words."""
        from core import validation
        from core.tables import spec

        table_spec = spec(self)
        values = tuple(getattr(self, f) for f in table_spec.fields)
        row, problems = table_spec.clean(values)
        if not problems and table_spec.references:
            problems = [
                validation.parent_problem(reference.field, reference.noun, pk)
                for _index, reference, pk in missing_parents(table_spec, [row])
            ]
        validation.raise_for(problems)


@receiver(pre_save)
def _guard_child_save(sender, instance, raw, using, **kwargs):
    """Every save of a child (``loaddata``'s raw saves too) checks its parents in the guard."""
    if not isinstance(instance, GuardedModel):
        return
    from core.tables import SPECS, spec

    if sender._meta.db_table not in SPECS:
        return
    table_spec = spec(sender)
    if table_spec.references:
        require_parents(table_spec, using, [instance])
