"""The single cache-epoch row exists from the start."""

from django.db import migrations


def create_row(apps, schema_editor):  # noqa: ANN001, ANN201
    apps.get_model("gateway", "CacheEpoch").objects.get_or_create(pk=1, defaults={"value": 0})


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]

    operations = [migrations.RunPython(create_row, migrations.RunPython.noop)]
