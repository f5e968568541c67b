"""Settings with the seed's LITEFS dict, for `python -m litefs_proxy_django.config`."""

from .test_config import SEED

SECRET_KEY = "x"
INSTALLED_APPS = ["litefs_proxy_django"]
LITEFS = SEED
