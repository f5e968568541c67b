"""System checks (``manage.py check``) for settings that do not suit a LiteFS replica."""

from django.conf import settings
from django.core.checks import Tags, Warning, register

MIDDLEWARE_PATH = "litefs_proxy_django.middleware.ReplayOnPrimaryMiddleware"
SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
SESSION_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
WRITES_ON_GET = (
    "On a replica the database is read-only: such a GET fails unless "
    + MIDDLEWARE_PATH
    + " replays it on the primary (every such request then costs a round trip there)."
)


@register(Tags.compatibility)
def settings_that_write_on_get(app_configs=None, **kwargs):
    out = []
    if getattr(settings, "SESSION_SAVE_EVERY_REQUEST", False):
        out.append(
            Warning(
                "SESSION_SAVE_EVERY_REQUEST = True saves the session on every request, GETs included.",
                hint=WRITES_ON_GET
                + " Or leave it False, or use signed-cookie sessions (SESSION_ENGINE = "
                "'django.contrib.sessions.backends.signed_cookies').",
                id="litefs_proxy.W001",
            )
        )
    if getattr(settings, "CSRF_USE_SESSIONS", False):
        out.append(
            Warning(
                "CSRF_USE_SESSIONS = True stores the CSRF token in the session: a GET that renders a form writes it.",
                hint=WRITES_ON_GET + " Or leave it False (the CSRF cookie writes nothing).",
                id="litefs_proxy.W002",
            )
        )
    if getattr(settings, "MESSAGE_STORAGE", "") == SESSION_STORAGE:
        out.append(
            Warning(
                "MESSAGE_STORAGE is the session storage: the GET that shows a message writes the session.",
                hint=WRITES_ON_GET
                + " Or use 'django.contrib.messages.storage.cookie.CookieStorage'.",
                id="litefs_proxy.W003",
            )
        )
    return out


@register(Tags.database)
def sqlite_transaction_mode(app_configs=None, **kwargs):
    out = []
    for alias, db in getattr(settings, "DATABASES", {}).items():
        if not str(db.get("ENGINE", "")).endswith("sqlite3"):
            continue
        mode = (db.get("OPTIONS") or {}).get("transaction_mode")
        if str(mode or "").upper() != "IMMEDIATE":
            out.append(
                Warning(
                    f"DATABASES[{alias!r}] is SQLite without OPTIONS "
                    "'transaction_mode': 'IMMEDIATE'.",
                    hint="A transaction that reads, then writes starts DEFERRED and fails with "
                    "'database is locked' when another writer got in between (no busy "
                    "timeout applies to the upgrade); IMMEDIATE takes the write lock at BEGIN "
                    "and waits for it (Django 5.1+).",
                    id="litefs_proxy.W004",
                )
            )
    return out


@register(Tags.compatibility)
def middleware_order(app_configs=None, **kwargs):
    mw = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in mw:
        return [
            Warning(
                MIDDLEWARE_PATH + " is not in MIDDLEWARE: a GET that writes on a replica fails there.",
                hint="Add it first in MIDDLEWARE.",
                id="litefs_proxy.W005",
            )
        ]
    if SESSION_MIDDLEWARE in mw and mw.index(MIDDLEWARE_PATH) > mw.index(SESSION_MIDDLEWARE):
        return [
            Warning(
                MIDDLEWARE_PATH + " comes after SessionMiddleware: it cannot see the session's "
                "failed save, and its answer would be saved again.",
                hint="Put it before SessionMiddleware (first in MIDDLEWARE).",
                id="litefs_proxy.W005",
            )
        ]
    return []
