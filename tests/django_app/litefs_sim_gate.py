"""Test harness only, not part of the Django project: the stand-in for LiteFS's FUSE
guarantee that a commit's TXID is published before the committing request can answer.

LiteFS sees a commit inside the write itself. The sim's LiteFS (`litefs-proxy sim-litefs
--watch-commits`, a process of its own) sees it by polling the database header every 1 ms,
so a response could reach litefs-proxy before the TXID moved and get a token a commit short.
This WSGI wrapper holds the response of a request during which the database's change counter
moved until the sim's commit watcher has accounted for the counter the app left (it writes
the counter it last accounted for to LITEFS_COUNTED, `<db>-counted`, after `<db>-pos`), at
most 2 s. That is exact however many times the request committed (an admin POST commits its
transaction, then SessionMiddleware saves the session; a login creates the session, updates
`last_login` and saves the session again) and however late the watcher's poll comes: waiting
only for the position to move released a response after its first commit, and the token
then missed the session save (a replica served the next page without the message or the
login). On 2 loaded cores the watcher's poll came up to 30 ms after a request's last commit.

Gated: any method but GET/HEAD/OPTIONS, and those too while the database is writable (the
primary: a GET litefs-proxy replays there writes, and is answered with a token). Not on a
replica (read-only; replication moves its counter, its watcher accounts for nothing).
With concurrent writers another request's later commit can only make a response wait a
poll longer.

The header is read with pread on a descriptor kept open for the process's life: closing a
descriptor of the database would drop the POSIX locks of every SQLite connection in this
process (other gunicorn threads mid-transaction).
"""
import os
import sys
import time

from testsite.wsgi import application as django_application

DB = os.environ.get("LITEFS_DB", "")
COUNTED = os.environ.get("LITEFS_COUNTED", "")
SAFE = {"GET", "HEAD", "OPTIONS"}
# Header byte 18 (write version) above 2: read-only to SQLite (the sim's replica marking).
WRITE_VERSION = 18
_fd = None


def _header():
    """(change counter, whether the file is writable), or None."""
    global _fd
    try:
        if _fd is None:
            _fd = os.open(DB, os.O_RDONLY)
        b = os.pread(_fd, 28, 0)
    except OSError:
        return None
    if len(b) < 28:
        return None
    return int.from_bytes(b[24:28], "big"), b[WRITE_VERSION] <= 2


def _counted():
    try:
        with open(COUNTED) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _wait_counted(counter):
    """Until the watcher has accounted for `counter` or later (u32, wrapping), the database
    turned read-only (no longer primary: nothing will be counted), or 2 s passed."""
    start = time.monotonic()
    while time.monotonic() < start + 2.0:
        seen = _counted()
        if seen is not None and (seen - counter) % 2**32 < 2**31:
            return
        head = _header()
        if head and not head[1]:
            return
        time.sleep(0.0002)
    sys.stderr.write(
        "litefs_sim_gate: change counter %d not counted within 2 s (last counted %s)\n"
        % (counter, _counted())
    )


def application(environ, start_response):
    if not COUNTED:
        return django_application(environ, start_response)
    before = _header()
    if environ.get("REQUEST_METHOD", "GET") in SAFE and not (before and before[1]):
        return django_application(environ, start_response)
    result = django_application(environ, start_response)
    after = _header()
    if after and before and after[0] != before[0]:
        _wait_counted(after[0])
    return result
