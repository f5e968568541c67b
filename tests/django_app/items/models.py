from django.db import models


class Item(models.Model):
    # Client-chosen, not unique on purpose: a write applied twice shows up as two rows.
    key = models.CharField(max_length=100, db_index=True)
    text = models.CharField(max_length=200, blank=True)
    node = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.key


class Upload(models.Model):
    name = models.CharField(max_length=200)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    node = models.CharField(max_length=100)


class Hit(models.Model):
    """A page counter: `GET /hits/<page>/` writes (a view that writes on GET)."""

    page = models.CharField(max_length=100, unique=True)
    count = models.BigIntegerField(default=0)
