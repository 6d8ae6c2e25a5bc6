"""The free plan serves every model free: a 0/0 price of its own for each alias that has none (billing.services
price_ensure_default does the same for aliases created later). Paid and staff-made plans keep the list prices."""

from django.db import migrations


def seed(apps, schema_editor):  # noqa: ANN001, ANN201
    from billing.services import price_ensure_default

    price_model = apps.get_model("billing", "ModelPrice")
    for alias in apps.get_model("routerpools", "ModelAlias").objects.values_list("alias", flat=True):
        price_ensure_default(alias=alias, price_model=price_model)


class Migration(migrations.Migration):
    dependencies = [("billing", "0009_stripeevent")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
