"""The provider's logic, natively: `python3 -m unittest` runs it under CPython against
addon_testing.py, an in-memory host with the real one's rules (a call's writes kept only if
it succeeds)."""

import re
import unittest

from addon_testing import Err, TestHost, deprovision_request, provision_request  # before app

import app


def new_host(**config):
    return TestHost(addon_id="{NAME}", config={"host_url": "https://{NAME}.example.com/", **config})


class ProviderTest(unittest.TestCase):
    def test_each_app_gets_a_url_and_a_secret_until_deprovision(self):
        host = new_host()
        first = host.call(lambda: app.WitWorld().provision(provision_request("app-1", "free")))
        got = {v.key: v.value for v in first.config}
        self.assertEqual(got["{PREFIX}_URL"], "https://{NAME}.example.com/apps/app-1")
        self.assertRegex(got["{PREFIX}_SECRET"], re.compile(r"^[0-9a-f]{48}$"))
        again = host.call(lambda: app.WitWorld().provision(provision_request("app-1", "pro")))
        self.assertEqual(again, first)
        host.call(lambda: app.WitWorld().deprovision(deprovision_request("app-1", "pro")))
        self.assertIsNone(host.kv_string("secret/app-1"))

    def test_without_host_url_the_provision_fails_and_keeps_nothing(self):
        host = TestHost(addon_id="{NAME}")
        with self.assertRaises(Err):
            host.call(lambda: app.WitWorld().provision(provision_request("app-1", "free")))
        self.assertEqual(host.kv_keys(), [])


if __name__ == "__main__":
    unittest.main()
