"""The global epoch row becomes an append-only change log: targeted invalidation, no row every writer waits for."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0002_epoch_row")]

    operations = [
        migrations.CreateModel(
            name="CacheChange",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "scope",
                    models.CharField(
                        choices=[("key", "Key"), ("unkey", "Unkey"), ("org", "Org"), ("routes", "Routes"), ("plans", "Plans")],
                        max_length=8,
                    ),
                ),
                ("ident", models.CharField(blank=True, default="", max_length=128)),
                ("created", models.DateTimeField(auto_now_add=True, db_index=True)),
            ],
        ),
        migrations.DeleteModel(name="CacheEpoch"),
    ]
