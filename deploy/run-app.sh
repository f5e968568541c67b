#!/bin/sh
# The app, started by LiteFS (litefs.yml `exec`) once this node is primary or connected to it.
set -eu
mount="${LITEFS_MOUNT:-/litefs}"
cd "${APP_DIR:-/app}"

# Migrations write, and only the primary can write: they run on the primary only, never on a
# replica (its database is read-only). $mount/.primary is LiteFS's file: absent on the
# primary (LiteFS runs this once primary or connected, so absence means primary). Later
# schema changes: run `python manage.py migrate` on the primary's node during the deploy.
if [ ! -e "$mount/.primary" ]; then
  python manage.py migrate --noinput || echo "run-app: migrate failed (primary moved?)" >&2
else
  echo "run-app: replica of $(cat "$mount/.primary"), not migrating" >&2
fi

# Loopback only: every request must come through litefs-proxy on :8080.
exec gunicorn --bind 127.0.0.1:8000 --workers "${WEB_CONCURRENCY:-2}" \
  --graceful-timeout 10 --access-logfile - mysite.wsgi
