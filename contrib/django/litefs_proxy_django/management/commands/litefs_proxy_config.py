"""``manage.py litefs_proxy_config``: prints litefs-proxy's TOML for ``settings.LITEFS``."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ...config import ConfigError, from_settings, to_toml


class Command(BaseCommand):
    help = "Print the litefs-proxy TOML config for the LITEFS settings dict."

    def handle(self, *args, **options):
        try:
            self.stdout.write(to_toml(from_settings(getattr(settings, "LITEFS", None) or {})), ending="")
        except ConfigError as e:
            raise CommandError(str(e), returncode=64)
