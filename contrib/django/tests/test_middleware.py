import sqlite3
import unittest

from django.contrib.sessions.exceptions import SessionInterrupted
from django.db.utils import OperationalError
from django.test import Client, override_settings

from litefs_proxy_django.middleware import is_readonly_error

from . import SESSION_KEY

WITHOUT = ["django.contrib.sessions.middleware.SessionMiddleware"]


def client():
    return Client(raise_request_exception=False)


class ReadonlyError(unittest.TestCase):
    def test_sqlite_error_and_wrapped_chains(self):
        raw = sqlite3.OperationalError("attempt to write a readonly database")
        self.assertTrue(is_readonly_error(raw))
        # Django's wrapper, raised from sqlite3's (`__cause__`).
        try:
            try:
                raise raw
            except sqlite3.OperationalError as e:
                raise OperationalError(*e.args) from e
        except OperationalError as wrapped:
            self.assertTrue(is_readonly_error(wrapped))
        # SessionInterrupted raised while handling it (`__context__`), with its own message.
        try:
            try:
                raise OperationalError("attempt to write a readonly database")
            except OperationalError:
                raise SessionInterrupted("The request's session was deleted before the request completed.")
        except SessionInterrupted as outer:
            self.assertTrue(is_readonly_error(outer))

    def test_other_errors_are_not(self):
        self.assertFalse(is_readonly_error(OperationalError("database is locked")))
        self.assertFalse(is_readonly_error(SessionInterrupted("gone")))
        self.assertFalse(is_readonly_error(ValueError()))
        # A cycle in the chain ends.
        a, b = ValueError("a"), ValueError("b")
        a.__context__, b.__context__ = b, a
        self.assertFalse(is_readonly_error(a))


class Middleware(unittest.TestCase):
    def assert_replay(self, resp):
        self.assertEqual(resp.status_code, 503)
        self.assertEqual(resp["litefs-replay"], "primary")

    def test_reads_that_write_are_answered_with_the_replay_header(self):
        for method in ("get", "head", "options"):
            with self.subTest(method=method):
                self.assert_replay(getattr(client(), method)("/write"))

    def test_a_read_that_does_not_write_is_untouched(self):
        resp = client().get("/read")
        self.assertEqual(resp.status_code, 200)
        self.assertNotIn("litefs-replay", resp)

    def test_other_methods_are_left_alone(self):
        for method in ("post", "put", "delete"):
            with self.subTest(method=method):
                resp = getattr(client(), method)("/write")
                self.assertEqual(resp.status_code, 500)
                self.assertNotIn("litefs-replay", resp)

    def test_a_swallowed_failed_write_is_replayed_too(self):
        self.assert_replay(client().get("/caught"))

    def test_a_new_session_saved_on_get(self):
        self.assert_replay(client().get("/session"))

    def test_an_existing_session_saved_on_get_session_interrupted(self):
        c = client()
        c.cookies["sessionid"] = SESSION_KEY
        self.assert_replay(c.get("/session"))
        # Without the middleware it is SessionInterrupted's 400: what the middleware turns.
        with override_settings(MIDDLEWARE=WITHOUT):
            c = client()
            c.cookies["sessionid"] = SESSION_KEY
            resp = c.get("/session")
            self.assertEqual(resp.status_code, 400)
            self.assertNotIn("litefs-replay", resp)

    def test_session_save_every_request(self):
        c = client()
        c.cookies["sessionid"] = SESSION_KEY
        with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
            self.assert_replay(c.get("/read"))
        resp = c.get("/read")
        self.assertEqual(resp.status_code, 200, "without it the same GET writes nothing")
