"""Settings of the test project behind litefs-proxy: one SQLite database on the (simulated)
LiteFS mount, writable on the primary and read-only on replicas. Everything that differs
between nodes comes from the environment; nothing in the project knows about LiteFS.
"""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-test-key")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["items"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
# contrib/django's helper, first (LITEFS_PROXY_DJANGO_HELPER=1; the harness puts the package
# on PYTHONPATH): a read that tries to write on a replica is replayed on the primary.
if os.environ.get("LITEFS_PROXY_DJANGO_HELPER") == "1":
    MIDDLEWARE.insert(0, "litefs_proxy_django.middleware.ReplayOnPrimaryMiddleware")
ROOT_URLCONF = "testsite.urls"
WSGI_APPLICATION = "testsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # <mount>/db.sqlite3 of this node.
        "NAME": os.environ.get("LITEFS_DB", "/litefs/db.sqlite3"),
        # Wait for SQLite's write lock instead of failing at once under concurrent writes.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Uploads stream to a temporary file (never held in memory whatever their size); 100 MB
# bodies are accepted.
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
FILE_UPLOAD_TEMP_DIR = os.environ.get("UPLOAD_TEMP_DIR") or None
DATA_UPLOAD_MAX_MEMORY_SIZE = 100 * 1024 * 1024

# The streaming view waits for flag files here.
STREAM_FLAG_DIR = os.environ.get("STREAM_FLAG_DIR", "/tmp")
NODE_NAME = os.environ.get("NODE_NAME", "unknown")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
