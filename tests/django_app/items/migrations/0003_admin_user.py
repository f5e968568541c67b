"""The superuser the e2e admin flows log in as. A migration, so it exists wherever the
schema does: `migrate` runs on the primary and replicas get both by replication."""
from django.contrib.auth.hashers import make_password
from django.db import migrations

USERNAME = "admin"
PASSWORD = "admin-flow-password"


def create(apps, schema_editor):
    User = apps.get_model("auth", "User")
    User.objects.create(
        username=USERNAME,
        password=make_password(PASSWORD),
        is_staff=True,
        is_superuser=True,
        is_active=True,
    )


def remove(apps, schema_editor):
    apps.get_model("auth", "User").objects.filter(username=USERNAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("items", "0002_hit"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create, remove)]
