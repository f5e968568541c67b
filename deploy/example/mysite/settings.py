"""Settings of the example app behind litefs-proxy: one SQLite database on the LiteFS mount.

Everything that differs between machines comes from the environment.
"""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = ["notes"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

# The database lives on the LiteFS FUSE mount: writable on the primary, read-only on
# replicas. litefs-proxy sends every write (POST, PUT, ...) to the primary's app.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DATABASE_PATH", "/litefs/db.sqlite3"),
        # Wait for SQLite's write lock instead of failing at once under concurrent writes.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# litefs-proxy and the load balancer set X-Forwarded-Host/-Proto.
USE_X_FORWARDED_HOST = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The origins browsers post forms from, scheme and port included (comma-separated), e.g.
# "https://notes.example.com,http://localhost:8080": behind a load balancer Django's CSRF
# check compares a POST's Origin with these (and with the Host nginx passes on, port kept).
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

USE_TZ = True
TIME_ZONE = "UTC"
