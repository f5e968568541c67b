"""The admin the e2e flows drive: items are added, listed, changed and deleted there."""
from django.conf import settings
from django.contrib import admin

from .models import Item


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ("key", "text", "node")
    fields = ("key", "text")

    def save_model(self, request, obj, form, change):
        # The node whose Django wrote it (the primary: admin POSTs go there).
        obj.node = settings.NODE_NAME
        super().save_model(request, obj, form, change)
