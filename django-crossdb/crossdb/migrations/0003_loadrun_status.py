"""A run's status and progress (``crossdb.models.LoadRun``), for loads started from the
admin's import page: recorded as running when they start, finished when they end. Runs
recorded before this migration were recorded once over: ``done``."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("crossdb", "0002_causal_positions"),
    ]

    operations = [
        migrations.AlterField(
            model_name="loadrun",
            name="finished_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="loadrun",
            name="status",
            field=models.CharField(
                choices=[("running", "running"), ("done", "done"), ("failed", "failed")],
                default="done",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="loadrun",
            name="progress",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="loadrun",
            name="updated_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
