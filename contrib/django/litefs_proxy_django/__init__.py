"""Django helpers for apps behind litefs-proxy on a LiteFS cluster.

- ``middleware``: ``ReplayOnPrimaryMiddleware``, a read that tried to write on a replica is
  answered ``litefs-replay: primary`` so litefs-proxy replays it on the primary.
- ``checks``: system checks for settings that write on GET and SQLite's transaction mode
  (registered when ``litefs_proxy_django`` is in ``INSTALLED_APPS``).
- ``config``: the litefs-proxy TOML config for a ``LITEFS`` settings dict.
"""

REPLAY_HEADER = "litefs-replay"
REPLAY_VALUE = "primary"
