"""Settings of the test project behind litefs-proxy: one SQLite database on the (simulated)
LiteFS mount, writable on the primary and read-only on replicas. Everything that differs
between nodes comes from the environment; nothing in the project knows about LiteFS.
"""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-test-key")
DEBUG = False
ALLOWED_HOSTS = ["*"]

# A real project's stack: the admin with auth, sessions, messages and CSRF (as
# `django-admin startproject` sets it up, less staticfiles: nothing serves static files here
# and the admin's pages render without them).
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "items",
]
MIDDLEWARE = [
    # Test harness only: names the node whose Django answered (`X-Served-By`), outside all.
    "testsite.served_by.ServedByMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# contrib/django's helper, before SessionMiddleware (LITEFS_PROXY_DJANGO_HELPER=1; the harness
# puts the package on PYTHONPATH): a read that tries to write on a replica is replayed on the
# primary. Its app adds the system checks.
if os.environ.get("LITEFS_PROXY_DJANGO_HELPER") == "1":
    MIDDLEWARE.insert(1, "litefs_proxy_django.middleware.ReplayOnPrimaryMiddleware")
    INSTALLED_APPS.append("litefs_proxy_django")
# The three settings that write on GET (LITEFS_TEST_GET_WRITES=1): the page that shows a
# message saves the session, every request with a session saves it, and the CSRF token lives
# in the session (a form page on a first visit creates one). Django's defaults write none.
if os.environ.get("LITEFS_TEST_GET_WRITES") == "1":
    MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
    SESSION_SAVE_EVERY_REQUEST = True
    CSRF_USE_SESSIONS = True
ROOT_URLCONF = "testsite.urls"
WSGI_APPLICATION = "testsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # <mount>/db.sqlite3 of this node.
        "NAME": os.environ.get("LITEFS_DB", "/litefs/db.sqlite3"),
        # Take the write lock at BEGIN and wait for it (up to 20 s) instead of failing with
        # "database is locked" when a transaction that read first upgrades (Django 5.1+).
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]
STATIC_URL = "static/"
# Test speed only: PBKDF2's million rounds would cost a core-second per login on the shared
# test machine; the flows do not depend on the hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

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
