from django.contrib import admin
from django.urls import path

from items import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("ping", views.ping),
    path("items/", views.items),
    path("items/<int:item_id>/", views.item),
    path("upload/", views.upload),
    path("stream/", views.stream),
    path("hits/<slug:page>/", views.hits),
]
