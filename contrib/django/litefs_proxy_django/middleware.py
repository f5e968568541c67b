"""A read that tried to write on a replica is answered ``litefs-replay: primary``.

On a LiteFS replica the database is read-only, so a GET that writes (a session saved on every
request, a "last seen" update) fails with SQLite's ``attempt to write a readonly database``,
often wrapped by Django (``OperationalError``, or ``SessionInterrupted`` when
``SessionMiddleware`` saves the session). This middleware watches every query of the request
(``connection.execute_wrapper``) and the view's exception, and when such an error happened
during a GET, HEAD or OPTIONS it answers ``503`` with ``litefs-replay: primary`` instead:
litefs-proxy then drops that answer and sends the request once to the primary (which can
write), whose answer the client gets. Other methods are left alone (litefs-proxy already
sends them to the primary), and so is every request without such an error.

Put it first in ``MIDDLEWARE`` (outside ``SessionMiddleware``), or its answer would pass
through ``SessionMiddleware`` again, which would try the same write.
"""

from contextlib import ExitStack

from django.db import connections
from django.http import HttpResponse

from . import REPLAY_HEADER, REPLAY_VALUE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# SQLite's message for SQLITE_READONLY (what a LiteFS replica's read-only database gives).
READONLY_MESSAGES = ("attempt to write a readonly database",)


def is_readonly_error(exc):
    """Whether ``exc``, or an exception it was raised from or during (``__cause__``,
    ``__context__``, followed to the end, each once), is SQLite's read-only database error."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = " ".join(str(a) for a in getattr(e, "args", ()) or (e,))
        if any(m in text.lower() for m in READONLY_MESSAGES):
            return True
        todo.append(e.__cause__)
        todo.append(e.__context__)
    return False


def replay_response():
    """The answer litefs-proxy replays on the primary (and what a client without litefs-proxy
    in front sees: a 503 worth retrying)."""
    resp = HttpResponse(
        "This request writes; it must be served by the primary.\n",
        status=503,
        content_type="text/plain; charset=utf-8",
    )
    resp[REPLAY_HEADER] = REPLAY_VALUE
    resp["Retry-After"] = "1"
    return resp


class ReplayOnPrimaryMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method not in SAFE_METHODS:
            return self.get_response(request)
        failed = []

        def watch(execute, sql, params, many, context):
            try:
                return execute(sql, params, many, context)
            except Exception as e:
                if is_readonly_error(e):
                    failed.append(e)
                raise

        with ExitStack() as stack:
            for alias in connections:
                stack.enter_context(connections[alias].execute_wrapper(watch))
            try:
                response = self.get_response(request)
            except Exception as e:
                if is_readonly_error(e):
                    return replay_response()
                raise
        if failed or getattr(request, "_litefs_proxy_readonly", False):
            return replay_response()
        return response

    def process_exception(self, request, exception):
        # A view's exception (also one raised outside the ORM, e.g. by the sqlite3 module).
        if request.method in SAFE_METHODS and is_readonly_error(exception):
            request._litefs_proxy_readonly = True
            return replay_response()
        return None
