from django.db import migrations


def seed(apps, schema_editor):
    # 0002 seeded no OpenRouter models (litellm's bundled map has none): add them from
    # routing/data/openrouter.json. Only OpenRouter's rows are touched.
    from routing.catalog import catalog_refresh

    catalog_refresh(providers=["openrouter"], model_cls=apps.get_model("routing", "Model"))


class Migration(migrations.Migration):
    dependencies = [("routing", "0002_seed_catalog")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
