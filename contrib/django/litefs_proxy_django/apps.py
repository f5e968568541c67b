"""Registers the system checks when the app is installed."""

from django.apps import AppConfig


class LitefsProxyConfig(AppConfig):
    name = "litefs_proxy_django"
    verbose_name = "litefs-proxy"

    def ready(self):
        from . import checks  # noqa: F401  (registers the checks)
