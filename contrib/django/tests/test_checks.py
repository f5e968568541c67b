import unittest

from django.core.checks import run_checks
from django.test import override_settings

from litefs_proxy_django import checks

MW = "litefs_proxy_django.middleware.ReplayOnPrimaryMiddleware"
SESSION_MW = "django.contrib.sessions.middleware.SessionMiddleware"


def ids(messages):
    return sorted(m.id for m in messages if m.id.startswith("litefs_proxy."))


class Checks(unittest.TestCase):
    def test_the_test_settings_are_clean(self):
        self.assertEqual(ids(run_checks()), [])

    def test_settings_that_write_on_get(self):
        cases = [
            ({"SESSION_SAVE_EVERY_REQUEST": True}, ["litefs_proxy.W001"]),
            ({"CSRF_USE_SESSIONS": True}, ["litefs_proxy.W002"]),
            (
                {"MESSAGE_STORAGE": "django.contrib.messages.storage.session.SessionStorage"},
                ["litefs_proxy.W003"],
            ),
            ({"MESSAGE_STORAGE": "django.contrib.messages.storage.cookie.CookieStorage"}, []),
        ]
        for overrides, expected in cases:
            with self.subTest(overrides=overrides), override_settings(**overrides):
                self.assertEqual(ids(run_checks()), expected)

    def test_sqlite_needs_immediate_transactions(self):
        for options, expected in [
            ({}, ["litefs_proxy.W004"]),
            ({"transaction_mode": "DEFERRED"}, ["litefs_proxy.W004"]),
            ({"transaction_mode": "IMMEDIATE"}, []),
            ({"transaction_mode": "immediate"}, []),
        ]:
            dbs = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "OPTIONS": options}}
            with self.subTest(options=options), override_settings(DATABASES=dbs):
                self.assertEqual(ids(checks.sqlite_transaction_mode()), expected)
        pg = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
        with override_settings(DATABASES=pg):
            self.assertEqual(ids(checks.sqlite_transaction_mode()), [])

    def test_middleware_first(self):
        for mw, expected in [
            ([MW, SESSION_MW], []),
            ([SESSION_MW, MW], ["litefs_proxy.W005"]),
            ([SESSION_MW], ["litefs_proxy.W005"]),
            ([MW], []),
        ]:
            with self.subTest(mw=mw), override_settings(MIDDLEWARE=mw):
                self.assertEqual(ids(checks.middleware_order()), expected)
