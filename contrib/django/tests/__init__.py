"""Tests of litefs_proxy_django, run by `cargo test -p litefs-proxy-tests --test contrib_django`
(or `python3 -m unittest discover -s tests -t .` from contrib/django). Django is configured
once here: a read-only SQLite database (``mode=ro``, as a LiteFS replica's is read-only) made
in a temporary directory with a session row and a table to write to."""

import logging
import os
import sqlite3
import tempfile

import django
from django.conf import settings

TMP = tempfile.mkdtemp(prefix="litefs-proxy-django-")
DB_PATH = os.path.join(TMP, "db.sqlite3")
SESSION_KEY = "s" * 32

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="litefs-proxy-django-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="tests.urls",
        INSTALLED_APPS=["django.contrib.sessions", "litefs_proxy_django"],
        MIDDLEWARE=[
            "litefs_proxy_django.middleware.ReplayOnPrimaryMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": f"file:{DB_PATH}?mode=ro",
                "OPTIONS": {"uri": True, "transaction_mode": "IMMEDIATE"},
            }
        },
        USE_TZ=False,
        LOGGING_CONFIG=None,
    )
    django.setup()
    # The 500s and 400s the tests provoke on purpose are logged by django.request.
    logging.getLogger("django.request").setLevel(logging.CRITICAL)


def make_database():
    """The read-only database's file: a `notes` table and a session `SESSION_KEY`."""
    from django.contrib.sessions.backends.db import SessionStore

    if os.path.exists(DB_PATH):
        return
    con = sqlite3.connect(DB_PATH)
    con.executescript(
        """
        CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY,
            session_data text NOT NULL, expire_date datetime NOT NULL);
        CREATE TABLE notes (id integer PRIMARY KEY, body text);
        """
    )
    con.execute(
        "INSERT INTO django_session VALUES (?, ?, '2099-01-01 00:00:00')",
        (SESSION_KEY, SessionStore().encode({"visits": 1})),
    )
    con.commit()
    con.close()


make_database()
