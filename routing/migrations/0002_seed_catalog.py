from django.db import migrations


def seed(apps, schema_editor):
    # Seeds from litellm's bundled model map (offline: LITELLM_LOCAL_MODEL_COST_MAP=True).
    from routing.catalog import catalog_refresh

    catalog_refresh(model_cls=apps.get_model("routing", "Model"))


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
