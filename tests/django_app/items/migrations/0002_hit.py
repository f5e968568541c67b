from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("items", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Hit",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("page", models.CharField(max_length=100, unique=True)),
                ("count", models.BigIntegerField(default=0)),
            ],
        ),
    ]
