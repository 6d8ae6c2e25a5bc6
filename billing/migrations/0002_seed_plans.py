"""Seed the free and pro plans."""

from django.db import migrations


def seed(apps, schema_editor):  # noqa: ANN001, ANN201
    from billing.services import plans_seed_defaults

    plans_seed_defaults(apps.get_model("billing", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
