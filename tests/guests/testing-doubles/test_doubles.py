"""The Python SDK's in-memory host (guest-sdk/python/addon_testing.py) keeps the real host's
rules: run by tests/all/languages.rs with ``python3 -m unittest``."""

import unittest

from addon_testing import Err, TestHost  # before the SDK

from addon_sdk import HttpError, Reply, enqueue, kv, provision_reply, send


def failing():
    kv.set_string("written", "yes")
    enqueue("kind", "payload")
    raise RuntimeError("after writing")


def succeeding():
    kv.set_string("written", "yes")
    assert kv.get_string("written") == "yes", "a call sees its own write"
    enqueue("kind", "payload")
    return provision_reply(Reply().set("DOUBLE_OK", "1"))


class DoublesTest(unittest.TestCase):
    def test_a_calls_writes_and_jobs_are_kept_only_if_it_succeeds(self):
        host = TestHost()
        with self.assertRaises(RuntimeError):
            host.call(failing)
        self.assertEqual((host.kv_keys(), len(host.enqueued)), ([], 0))
        out = host.call(succeeding)
        self.assertEqual([(v.key, v.value) for v in out.config], [("DOUBLE_OK", "1")])
        self.assertEqual((host.kv_string("written"), len(host.enqueued)), ("yes", 1))

    def test_compare_and_swap_deletes_and_listings_see_pending_writes(self):
        host = TestHost()

        def call():
            self.assertTrue(kv.compare_and_swap_string("k", None, "a"))
            self.assertFalse(kv.compare_and_swap_string("k", None, "b"))
            self.assertTrue(kv.compare_and_swap_string("k", "a", "c"))
            kv.set_string("k2", "x")
            self.assertEqual(kv.list_keys("k"), ["k", "k2"])
            self.assertTrue(kv.delete("k2"))
            self.assertEqual(kv.list_keys(""), ["k"])

        host.call(call)
        self.assertEqual((host.kv_keys(), host.kv_string("k")), (["k"], "c"))

    def test_outbound_requests_reach_only_the_routes_the_test_sets(self):
        host = TestHost().on_http("https://api.example.com/", {"status": 201, "body": '{"ok": true}'})

        def call():
            answer = send("POST", "https://api.example.com/x", body="hi")
            self.assertEqual((answer.status, answer.json()), (201, {"ok": True}))
            with self.assertRaises(HttpError) as refused:
                send("GET", "https://elsewhere.example.com/")
            self.assertEqual(refused.exception.kind, "denied")

        host.call(call)
        # Every request the plugin made, answered or refused.
        made = [(r.method, r.url, r.body) for r in host.requests]
        self.assertEqual(made, [("POST", "https://api.example.com/x", b"hi"), ("GET", "https://elsewhere.example.com/", b"")])

    def test_an_import_outside_a_call_is_an_error(self):
        with self.assertRaises(RuntimeError):
            kv.get("k")
        with self.assertRaises(Err):
            TestHost().call(lambda: kv.get(""))


if __name__ == "__main__":
    unittest.main()
