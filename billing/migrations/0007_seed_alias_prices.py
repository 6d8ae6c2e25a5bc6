"""Price every model alias that exists and has no alias-wide price, at the default (PORTAL_DEFAULT_*_PRICE_PER_MILLION).

Aliases created later are priced by billing.signals when they are saved."""

from django.db import migrations


def seed(apps, schema_editor):  # noqa: ANN001, ANN201
    from billing.services import price_ensure_default

    price_model = apps.get_model("billing", "ModelPrice")
    for alias in apps.get_model("routerpools", "ModelAlias").objects.values_list("alias", flat=True):
        price_ensure_default(alias=alias, price_model=price_model)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_plan_prepaid_monthly_price_stripe"),
        ("routerpools", "0003_modelalias_cap_is_the_default"),
    ]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
