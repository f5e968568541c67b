#!/usr/bin/env bash
# Container entrypoint: litefs-proxy (Raft election, lease endpoint, :8080) and LiteFS (FUSE
# mount, replication on :20202; it starts the app through litefs.yml `exec`). When LiteFS
# exits, the container goes down (the orchestrator restarts it whole). When litefs-proxy
# crashes, it is started again in place a second later, while LiteFS runs on: its lease
# keeper (a process of its own) still serves LiteFS's lease endpoint meanwhile, so LiteFS
# can hand its primary over to the new leader at once. Exit 64 (a bad config) is final.
# Stop order on SIGTERM: litefs-proxy first (it hands Raft leadership over and finishes the
# in-flight requests while the app still runs), then LiteFS (it stops the app and unmounts).
set -euo pipefail

export LITEFS_NODE_NAME="${LITEFS_NODE_NAME:-$HOSTNAME}"
export LITEFS_ADVERTISE_HOST="${LITEFS_ADVERTISE_HOST:-$LITEFS_NODE_NAME}"
config="${LITEFS_PROXY_CONFIG:-/etc/litefs-proxy.toml}"

if [ ! -f "$config" ]; then
  echo "entrypoint: no litefs-proxy config at $config (mount one, see deploy/config/)" >&2
  exit 64
fi
# Fail fast, naming the bad key, before anything is started.
litefs-proxy check --config "$config" >/dev/null

proxy="" litefs=""
stop() {
  trap '' TERM INT
  if [ -n "$proxy" ]; then
    kill -TERM "$proxy" 2>/dev/null || true
    wait "$proxy" 2>/dev/null || true
  fi
  if [ -n "$litefs" ]; then
    kill -TERM "$litefs" 2>/dev/null || true
    wait "$litefs" 2>/dev/null || true
  fi
}
# Installed before anything starts: a SIGTERM stops whatever has been started.
trap 'stop; exit 0' TERM INT

# LiteFS retries the lease endpoint until litefs-proxy listens, so the start order is free.
litefs-proxy run --config "$config" &
proxy=$!
litefs mount -config /etc/litefs.yml &
litefs=$!
echo "entrypoint: started litefs-proxy (pid $proxy) and litefs (pid $litefs)" >&2

set +e
while true; do
  wait -n "$proxy" "$litefs"
  status=$?
  if kill -0 "$litefs" 2>/dev/null && [ "$status" -ne 0 ] && [ "$status" -ne 64 ]; then
    echo "entrypoint: litefs-proxy exited with status $status; starting it again" >&2
    sleep 1
    litefs-proxy run --config "$config" &
    proxy=$!
    continue
  fi
  break
done
echo "entrypoint: a child exited with status $status, stopping the other" >&2
stop
exit "$status"
