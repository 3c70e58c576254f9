"""crossdb's tables, created where the router allows them, unless they exist already.

The two models lived in the app ``core`` of multids before crossdb was an app of its own;
databases made then hold the tables under these same names (``core``'s migrations, which
run first there, say so with ``run_before``). So the state is created as usual and each
table only where it is missing: nothing to copy, nothing to rename.
"""

from django.db import migrations, models


def create_missing(name):
    """A RunPython function creating model name's table unless it exists."""

    def create(apps, schema_editor):
        model = apps.get_model("crossdb", name)
        if model._meta.db_table not in schema_editor.connection.introspection.table_names():
            schema_editor.create_model(model)

    return create


def drop(name):
    def delete(apps, schema_editor):
        model = apps.get_model("crossdb", name)
        if model._meta.db_table in schema_editor.connection.introspection.table_names():
            schema_editor.delete_model(model)

    return delete


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ReferenceGuard",
                    fields=[
                        (
                            "parent",
                            models.CharField(max_length=100, primary_key=True, serialize=False),
                        ),
                        ("deletions", models.BigIntegerField(default=0)),
                    ],
                    options={"db_table": "multids_reference_guard"},
                ),
                migrations.CreateModel(
                    name="LoadRun",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("started_at", models.DateTimeField()),
                        ("finished_at", models.DateTimeField()),
                        ("source", models.CharField(max_length=500)),
                        ("summary", models.JSONField()),
                    ],
                    options={"db_table": "load_runs", "ordering": ["-started_at"]},
                ),
            ],
        ),
        # After the state, so the historical models exist for them; the hints let the router
        # run each where its table belongs (the counters in every routed database, the runs
        # on default).
        migrations.RunPython(
            create_missing("ReferenceGuard"),
            drop("ReferenceGuard"),
            hints={"model_name": "referenceguard"},
        ),
        migrations.RunPython(
            create_missing("LoadRun"), drop("LoadRun"), hints={"model_name": "loadrun"}
        ),
    ]
