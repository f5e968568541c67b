import unittest

from litefs_proxy_django.config import ConfigError, from_settings, to_toml

# The shape of django-litefs's settings (the seed notes' example).
SEED = {
    "MOUNT_PATH": "/litefs",
    "DATA_PATH": "/var/lib/litefs",
    "DATABASE_NAME": "db.sqlite3",
    "LEADER_ELECTION": "raft",
    "PROXY_ADDR": ":8080",
    "ENABLED": True,
    "RETENTION": "1h",
    "RAFT_SELF_ADDR": "node-1:4321",
    "RAFT_PEERS": ["node-1:4321", "node-2:4321", "node-3:4321"],
    "PROXY": {
        "ADDR": ":8080",
        "TARGET": "localhost:8000",
        "DB": "db.sqlite3",
        "PASSTHROUGH": ["/health", "/static/*"],
        "PRIMARY_REDIRECT_TIMEOUT": "10s",
    },
}


class Config(unittest.TestCase):
    def test_the_seed_settings(self):
        self.assertEqual(
            from_settings(SEED),
            {
                "proxy": {
                    "addr": ":8080",
                    "target": "localhost:8000",
                    "db": "db.sqlite3",
                    "mount": "/litefs",
                    "passthrough": ["/health", "/static/*"],
                    "primary_redirect_timeout": "10s",
                },
                "role": {"source": "raft"},
                "election": {
                    "node_id": "node-1",
                    "raft_addr": "0.0.0.0:4321",
                    "advertise_raft": "node-1:4321",
                    "peers": ["node-1:4321", "node-2:4321", "node-3:4321"],
                },
            },
        )
        toml = to_toml(from_settings(SEED))
        self.assertIn('\n[proxy]\naddr = ":8080"\n', toml)
        self.assertIn('passthrough = ["/health", "/static/*"]\n', toml)
        self.assertIn('peers = ["node-1:4321", "node-2:4321", "node-3:4321"]\n', toml)
        self.assertIn("LITEFS_PROXY_ELECTION__CLUSTER_SECRET", toml)

    def test_static_and_fallbacks(self):
        cfg = from_settings(
            {
                "LEADER_ELECTION": "static",
                "PROXY_ADDR": ":9090",
                "DATABASE_NAME": "app.db",
                "PROXY": {"PRIMARY_REDIRECT_TIMEOUT": 2.5},
            }
        )
        self.assertEqual(
            cfg,
            {
                "proxy": {"addr": ":9090", "db": "app.db", "primary_redirect_timeout": "2500ms"},
                "role": {"source": "static"},
            },
        )
        self.assertEqual(from_settings({}), {"proxy": {}})

    def test_errors_name_the_key(self):
        for bad, key in [
            ({"PROXY_ADR": ":1"}, "PROXY_ADR"),
            ({"PROXY": {"TARGETS": "x"}}, "TARGETS"),
            ({"PROXY": {"PRIMARY_REDIRECT_TIMEOUT": "soon"}}, "PRIMARY_REDIRECT_TIMEOUT"),
            ({"PROXY": {"PASSTHROUGH": "/static/*"}}, "PASSTHROUGH"),
            ({"LEADER_ELECTION": "consul"}, "LEADER_ELECTION"),
            ({"RAFT_PEERS": ["a:1"], "RAFT_SELF_ADDR": "b:1"}, "RAFT_SELF_ADDR"),
            ({"RAFT_PEERS": ["a:1"]}, "RAFT_SELF_ADDR"),
            ({"RAFT_PEERS": ["a"], "RAFT_SELF_ADDR": "a"}, "RAFT_PEERS"),
            ({"RAFT_PEERS": "a:1", "RAFT_SELF_ADDR": "a:1"}, "RAFT_PEERS"),
        ]:
            with self.subTest(bad=bad):
                with self.assertRaises(ConfigError) as e:
                    from_settings(bad)
                self.assertIn(key, str(e.exception))
