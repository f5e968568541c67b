"""Test harness only, not part of the Django project: the stand-in for LiteFS's FUSE
guarantee that a commit's TXID is published before the committing request can answer.

LiteFS sees a commit inside the write itself. The simulator (tests/src/django/watch.rs) sees it
by polling the database header, so a response could reach litefs-proxy a moment before the
TXID moved and get a token one commit short. This WSGI wrapper closes that window exactly:
after a write request (any method but GET/HEAD/OPTIONS), if the database's change counter
is past the last one the simulator has published in LITEFS_SIM_COUNTED, it waits (at most
2 s) until the simulator has counted it, then lets gunicorn send the response.

The header is read with pread on a descriptor kept open for the process's life: closing a
descriptor of the database would drop the POSIX locks of every SQLite connection in this
process (other gunicorn threads mid-transaction).
"""
import os
import time

from testsite.wsgi import application as django_application

DB = os.environ.get("LITEFS_DB", "")
COUNTED = os.environ.get("LITEFS_SIM_COUNTED", "")
SAFE = {"GET", "HEAD", "OPTIONS"}
_fd = None


def _change_counter():
    global _fd
    try:
        if _fd is None:
            _fd = os.open(DB, os.O_RDONLY)
        b = os.pread(_fd, 4, 24)
    except OSError:
        return None
    return int.from_bytes(b, "big") if len(b) == 4 else None


def _counted():
    try:
        with open(COUNTED) as f:
            return int(f.read().strip() or "-1")
    except (OSError, ValueError):
        return -1


def _wait_counted():
    want = _change_counter()
    if want is None or not COUNTED:
        return
    deadline = time.monotonic() + 2.0
    while _counted() < want and time.monotonic() < deadline:
        time.sleep(0.0002)


def application(environ, start_response):
    result = django_application(environ, start_response)
    if environ.get("REQUEST_METHOD", "GET") not in SAFE:
        _wait_counted()
    return result
