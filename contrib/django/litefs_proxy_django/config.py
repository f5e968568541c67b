"""The litefs-proxy TOML config for a ``LITEFS`` settings dict (django-litefs's shape).

    python -m litefs_proxy_django.config            # DJANGO_SETTINGS_MODULE's LITEFS
    python manage.py litefs_proxy_config            # the same, as a management command

Keys read (anything else is an error, so a typo does not go unnoticed)::

    LITEFS = {
        "MOUNT_PATH": "/litefs",            # -> [proxy] mount
        "DATABASE_NAME": "db.sqlite3",      # -> [proxy] db (unless PROXY.DB)
        "LEADER_ELECTION": "raft",          # -> [role] source ("raft" or "static")
        "PROXY_ADDR": ":8080",              # -> [proxy] addr (unless PROXY.ADDR)
        "RAFT_SELF_ADDR": "node-1:4321",    # -> [election] node_id (its host), advertise_raft
        "RAFT_PEERS": ["node-1:4321", ...], # -> [election] peers (short form)
        "PROXY": {
            "ADDR": ":8080",
            "TARGET": "localhost:8000",
            "DB": "db.sqlite3",
            "PASSTHROUGH": ["/health", "/static/*"],
            "PRIMARY_REDIRECT_TIMEOUT": "10s",   # or a number of seconds
        },
        # LiteFS's own settings, not litefs-proxy's (accepted, not printed):
        "DATA_PATH": ..., "RETENTION": ..., "ENABLED": ...,
    }

The Raft secret is never printed: give it to litefs-proxy in the environment
(``LITEFS_PROXY_ELECTION__CLUSTER_SECRET``).
"""

import re
import sys

TOP_KEYS = {
    "MOUNT_PATH",
    "DATABASE_NAME",
    "LEADER_ELECTION",
    "PROXY_ADDR",
    "RAFT_SELF_ADDR",
    "RAFT_PEERS",
    "PROXY",
}
LITEFS_ONLY_KEYS = {"DATA_PATH", "RETENTION", "ENABLED"}
PROXY_KEYS = {"ADDR", "TARGET", "DB", "PASSTHROUGH", "PRIMARY_REDIRECT_TIMEOUT"}
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


class ConfigError(ValueError):
    """A ``LITEFS`` setting litefs-proxy cannot take; the message names the key."""


def _str(key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"LITEFS[{key}] must be a non-empty string, got {value!r}")
    return value


def _duration(key, value):
    if isinstance(value, bool):
        raise ConfigError(f"LITEFS[{key}] must be a duration such as '10s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"LITEFS[{key}] must not be negative, got {value!r}")
        return f"{int(value * 1000)}ms"
    if not isinstance(value, str) or not DURATION.match(value.strip()):
        raise ConfigError(f"LITEFS[{key}] must be a duration such as '10s', got {value!r}")
    return value.strip()


def _host_port(key, value):
    value = _str(key, value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"LITEFS[{key}] must be host:port, got {value!r}")
    return host, int(port)


def from_settings(litefs):
    """The litefs-proxy config (nested dicts: table -> key -> value) for ``litefs``."""
    if not isinstance(litefs, dict):
        raise ConfigError(f"LITEFS must be a dict, got {type(litefs).__name__}")
    unknown = set(litefs) - TOP_KEYS - LITEFS_ONLY_KEYS
    if unknown:
        raise ConfigError(f"LITEFS has unknown keys: {', '.join(sorted(unknown))}")
    proxy_in = litefs.get("PROXY") or {}
    if not isinstance(proxy_in, dict):
        raise ConfigError("LITEFS[PROXY] must be a dict")
    unknown = set(proxy_in) - PROXY_KEYS
    if unknown:
        raise ConfigError(f"LITEFS[PROXY] has unknown keys: {', '.join(sorted(unknown))}")

    proxy = {}
    addr = proxy_in.get("ADDR", litefs.get("PROXY_ADDR"))
    if addr is not None:
        proxy["addr"] = _str("PROXY.ADDR", addr)
    if "TARGET" in proxy_in:
        proxy["target"] = _str("PROXY.TARGET", proxy_in["TARGET"])
    db = proxy_in.get("DB", litefs.get("DATABASE_NAME"))
    if db is not None:
        proxy["db"] = _str("PROXY.DB", db)
    if "MOUNT_PATH" in litefs:
        proxy["mount"] = _str("MOUNT_PATH", litefs["MOUNT_PATH"])
    if "PASSTHROUGH" in proxy_in:
        pt = proxy_in["PASSTHROUGH"]
        if isinstance(pt, str) or not all(isinstance(p, str) and p for p in pt):
            raise ConfigError(f"LITEFS[PROXY.PASSTHROUGH] must be a list of globs, got {pt!r}")
        proxy["passthrough"] = list(pt)
    if "PRIMARY_REDIRECT_TIMEOUT" in proxy_in:
        proxy["primary_redirect_timeout"] = _duration(
            "PROXY.PRIMARY_REDIRECT_TIMEOUT", proxy_in["PRIMARY_REDIRECT_TIMEOUT"]
        )

    out = {"proxy": proxy}
    election_kind = litefs.get("LEADER_ELECTION", "raft" if "RAFT_PEERS" in litefs else None)
    if election_kind is None:
        return out
    if election_kind not in ("raft", "static"):
        raise ConfigError(
            f"LITEFS[LEADER_ELECTION] must be 'raft' or 'static', got {election_kind!r}"
        )
    out["role"] = {"source": election_kind}
    if election_kind == "static":
        return out
    peers = litefs.get("RAFT_PEERS")
    if isinstance(peers, str) or not peers:
        raise ConfigError(f"LITEFS[RAFT_PEERS] must be a list of host:port, got {peers!r}")
    for p in peers:
        _host_port("RAFT_PEERS", p)
    if "RAFT_SELF_ADDR" not in litefs:
        raise ConfigError("LITEFS[RAFT_SELF_ADDR] is required with LEADER_ELECTION 'raft'")
    self_addr = _str("RAFT_SELF_ADDR", litefs["RAFT_SELF_ADDR"])
    host, port = _host_port("RAFT_SELF_ADDR", self_addr)
    if self_addr not in peers:
        raise ConfigError(f"LITEFS[RAFT_SELF_ADDR] {self_addr!r} is not one of RAFT_PEERS")
    out["election"] = {
        "node_id": host,
        "raft_addr": f"0.0.0.0:{port}",
        "advertise_raft": self_addr,
        "peers": list(peers),
    }
    return out


def _toml_value(v):
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(cfg):
    """``cfg`` (from :func:`from_settings`) as litefs-proxy's TOML."""
    lines = ["# litefs-proxy config from Django's LITEFS settings (litefs_proxy_django.config)."]
    if "election" in cfg:
        lines.append(
            "# Set the Raft secret in the environment: LITEFS_PROXY_ELECTION__CLUSTER_SECRET."
        )
    for table in ("proxy", "role", "election"):
        if table not in cfg:
            continue
        lines.append("")
        lines.append(f"[{table}]")
        for k, v in cfg[table].items():
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Prints the TOML for ``settings.LITEFS``; exit 64 naming the key when it is unusable."""
    import django
    from django.conf import settings

    django.setup()
    try:
        sys.stdout.write(to_toml(from_settings(getattr(settings, "LITEFS", None) or {})))
    except ConfigError as e:
        sys.stderr.write(f"litefs_proxy_django.config: {e}\n")
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main())
