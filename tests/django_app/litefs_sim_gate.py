"""Test harness only, not part of the Django project: the stand-in for LiteFS's FUSE
guarantee that a commit's TXID is published before the committing request can answer.

LiteFS sees a commit inside the write itself. The sim's LiteFS (`litefs-proxy sim-litefs
--watch-commits`, a process of its own) sees it by polling the database header every 1 ms,
so a response could reach litefs-proxy a moment before the TXID moved and get a token one
commit short. This WSGI wrapper holds a write request's response (any method but
GET/HEAD/OPTIONS) until the position LiteFS publishes in LITEFS_POS (`<db>-pos`) has moved
past the one read before the request, when the database's change counter moved during it
(at most 2 s).

Exact for one writer at a time (the read-your-writes rounds); with concurrent writers
another request's commit can move the position first and release this one before its own
commit is counted, at most one poll of the watcher early. The sim does not publish which
database state it has counted, which is what an exact gate would wait for.

The header is read with pread on a descriptor kept open for the process's life: closing a
descriptor of the database would drop the POSIX locks of every SQLite connection in this
process (other gunicorn threads mid-transaction).
"""
import os
import time

from testsite.wsgi import application as django_application

DB = os.environ.get("LITEFS_DB", "")
POS = os.environ.get("LITEFS_POS", "")
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


def _txid():
    try:
        with open(POS) as f:
            return int(f.read().split("/")[0], 16)
    except (OSError, ValueError):
        return -1


def application(environ, start_response):
    if environ.get("REQUEST_METHOD", "GET") in SAFE or not POS:
        return django_application(environ, start_response)
    counter, txid = _change_counter(), _txid()
    result = django_application(environ, start_response)
    if _change_counter() != counter:
        deadline = time.monotonic() + 2.0
        while _txid() <= txid and time.monotonic() < deadline:
            time.sleep(0.0002)
    return result
