#!/bin/sh
# The app, started by LiteFS (litefs.yml `exec`) once this node is primary or connected to it.
set -eu
cd /app

# Migrations write, and only the primary can write. /litefs/.primary is LiteFS's file: absent
# on the primary (this node is connected by now, so absence means primary). Later schema
# changes: run `python manage.py migrate` on the primary's node during the deploy.
if [ ! -e /litefs/.primary ]; then
  python manage.py migrate --noinput || echo "run-app: migrate failed (primary moved?)" >&2
fi

# Loopback only: every request must come through litefs-proxy on :8080.
exec gunicorn --bind 127.0.0.1:8000 --workers "${WEB_CONCURRENCY:-2}" \
  --graceful-timeout 10 --access-logfile - mysite.wsgi
