"""The watermark table of causal reads (``crossdb.causal``), in every routed database."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("crossdb", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="CausalPosition",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("parent_alias", models.CharField(max_length=100)),
                ("slot", models.SmallIntegerField()),
                ("position", models.BigIntegerField()),
            ],
            options={
                "db_table": "crossdb_causal_positions",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("parent_alias", "slot"), name="crossdb_causal_position_slot"
                    )
                ],
            },
        ),
    ]
