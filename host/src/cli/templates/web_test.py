"""The provider and its pages, natively: `python3 -m unittest` runs them under CPython against
addon_testing.py, an in-memory host with the real one's rules, which also passes each page
request the identity the host would."""

import unittest

from addon_testing import TestHost, provision_request  # before app

import app


class WebTest(unittest.TestCase):
    def test_the_dashboard_shows_the_plan_and_saves_a_note(self):
        host = TestHost(addon_id="{NAME}", config={"host_url": "https://{NAME}.example.com"})
        host.call(lambda: app.WitWorld().provision(provision_request("app-1", "pro")))
        identity = {"resource_id": "app-1", "plan": "pro", "app_title": "My <App>"}
        page = host.web(app.IncomingHandler(), path="/dashboard/", identity=identity)
        self.assertEqual(page.status, 200)
        self.assertIn("My &lt;App&gt;", page.text)
        self.assertIn('name="_csrf"', page.text)
        saved = host.web(app.IncomingHandler(), method="POST", path="/dashboard/note", body="note=hello", identity=identity)
        self.assertEqual(saved.status, 303)
        status = host.web(app.IncomingHandler(), path="/api/status", identity={**identity, "surface": "api"})
        self.assertEqual(status.json(), {"app": "app-1", "plan": "pro", "note": "hello"})


if __name__ == "__main__":
    unittest.main()
