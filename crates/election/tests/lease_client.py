#!/usr/bin/env python3
"""Drive the litefs-proxy lease endpoint with py-consul, making the calls LiteFS's consul
leaser makes (superfly/litefs consul/consul.go and store.go: ClusterID, PrimaryInfo, Acquire =
session create + KV acquire, SetClusterID, Renew, Close = release + destroy), in its order.

  lease_client.py primary  LEADER FOLLOWER LEADER_NAME FOLLOWER_NAME
  lease_client.py failover NEW_LEADER OTHER OLD_SESSION NEW_LEADER_NAME OTHER_NAME CLUSTER_ID

Addresses are host:port of lease endpoints. Prints one JSON line; exits 1 naming the first
mismatch.
"""
import json
import secrets
import sys
import time

import consul

KEY = "litefs/primary"
CLUSTER_ID_KEY = KEY + "/clusterid"


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def eventually(what, fn, timeout=3.0):
    """Followers apply a little after the leader answered: poll like LiteFS's retry loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        time.sleep(0.05)


def cluster_id(c):
    index, kv = c.kv.get(CLUSTER_ID_KEY)
    check(int(index) >= 1, f"X-Consul-Index {index!r}")
    return None if kv is None else kv["Value"].decode()


def primary_info(c):
    _, kv = c.kv.get(KEY)
    if kv is None or not kv.get("Value"):
        return None  # LiteFS: ErrNoPrimary
    return json.loads(kv["Value"])


def close_lease(c, sid):
    released = c.kv.put(KEY, None, release=sid)
    destroyed = c.session.destroy(sid)
    return released, destroyed


def acquire(c, hostname):
    """LiteFS Acquire: a delete-behaviour session with TTL and lock-delay, then a KV acquire
    whose value is the primary info. On refusal LiteFS closes the lease again."""
    sid = c.session.create(name="litefs", behavior="delete", lock_delay=1, ttl=10)
    value = json.dumps({"hostname": hostname, "advertiseURL": f"http://{hostname}:20202"})
    if c.kv.put(KEY, value, acquire=sid):
        return sid
    released, destroyed = close_lease(c, sid)
    check(released is False, "release of a lock never held answers false")
    check(destroyed is True, "destroy answers true")
    return None


def primary(leader, follower, leader_name, follower_name):
    lc, fc = client(leader), client(follower)
    # Fresh cluster: no cluster id, no primary, seen the same from both nodes.
    for c in (lc, fc):
        check(cluster_id(c) is None, "no cluster id yet")
        check(primary_info(c) is None, "no primary yet")
    # The follower's LiteFS (a candidate) tries first and is refused: not the Raft leader.
    check(acquire(fc, follower_name) is None, "follower's LiteFS must not get the lock")
    # The leader's LiteFS becomes primary.
    sid = acquire(lc, leader_name)
    check(sid is not None, "leader's LiteFS gets the lock")
    info = eventually("session visible on the follower", lambda: fc.session.info(sid)[1])
    check(info["Node"] == leader_name, f"session owned by the leader's node: {info}")
    check(info["Behavior"] == "delete" and info["TTL"] == "10s", f"session fields: {info}")
    # monitorLeaseAsPrimary: set the cluster id once.
    check(cluster_id(lc) is None, "cluster id still unset")
    cid = "LFSC" + secrets.token_hex(8).upper()
    check(lc.kv.put(CLUSTER_ID_KEY, cid) is True, "cluster id set")
    renewed = lc.session.renew(sid)
    check(renewed["ID"] == sid, f"renew returns the session: {renewed}")
    # The follower's LiteFS sees the cluster id and connects to the primary it names.
    eventually("cluster id on the follower", lambda: cluster_id(fc) == cid)
    p = eventually("primary info on the follower", lambda: primary_info(fc))
    check(p["hostname"] == leader_name, f"primary info: {p}")
    _, kv = fc.kv.get(KEY)
    check(kv["Session"] == sid and kv["LockIndex"] == 1, f"lock fields: {kv}")
    # The cluster id never changes.
    check(fc.kv.put(CLUSTER_ID_KEY, "LFSC0000000000000000") is False, "cluster id overwrite refused")
    check(lc.kv.put(CLUSTER_ID_KEY, "LFSC0000000000000000", cas=0) is False, "cas=0 refused")
    check(cluster_id(lc) == cid, "cluster id unchanged")
    # Renewing from the follower's endpoint works too (forwarded to the leader).
    check(fc.session.renew(sid)["ID"] == sid, "renew through the follower")
    print(json.dumps({"session": sid, "cluster_id": cid}))


def failover(new_leader, other, old_sid, new_name, other_name, cid):
    nc, oc = client(new_leader), client(other)

    # The old primary's next renew fails (404 -> ErrLeaseExpired), so its LiteFS demotes; its
    # lock stays until its LiteFS may no longer believe in it (its last renewal plus LiteFS's
    # TTL + 1 s for a 10 s TTL, plus a margin), then it goes with the session.
    def renew_refused():
        try:
            nc.session.renew(old_sid)
            return False
        except consul.NotFound:
            return True

    eventually("old session invalidated", renew_refused)
    try:
        oc.session.renew(old_sid)
        check(False, "old session renewed through the other node")
    except consul.NotFound:
        pass
    # Its key (behavior delete) is gone everywhere: no primary.
    check(primary_info(nc) is not None, "the old lock stays while it may be believed in")
    check(acquire(nc, new_name) is None, "nobody locks before the old belief has run out")
    eventually("old primary key deleted", lambda: primary_info(nc) is None, timeout=15.0)
    eventually("old primary key deleted on the other node", lambda: primary_info(oc) is None)
    check(cluster_id(nc) == cid, "cluster id survives the failover")
    # The new leader's LiteFS acquires on a later try (lock-delay 1 s; LiteFS retries every
    # reconnect-delay, 1 s by default).
    started = time.monotonic()
    attempts = 0
    sid = None
    while sid is None:
        attempts += 1
        sid = acquire(nc, new_name)
        if sid is None:
            check(time.monotonic() - started < 5, "new leader's LiteFS never acquired")
            time.sleep(0.2)
    took = time.monotonic() - started
    # The other node's LiteFS follows it and cannot take the lock.
    p = eventually("new primary on the other node", lambda: primary_info(oc))
    check(p["hostname"] == new_name, f"primary info: {p}")
    check(acquire(oc, other_name) is None, "the other node's LiteFS must not get the lock")
    check(nc.session.renew(sid)["ID"] == sid, "new session renews")
    # Close (demotion or shutdown): release then destroy; no primary afterwards.
    check(close_lease(nc, sid) == (True, True), "release and destroy")
    check(primary_info(nc) is None, "released: no primary")
    print(json.dumps({"attempts": attempts, "acquired_after_s": round(took, 3)}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "primary":
        primary(*args)
    elif cmd == "failover":
        failover(*args)
    else:
        check(False, f"unknown command {cmd}")
