"""The provider and its job, natively: `python3 -m unittest` runs them under CPython against
addon_testing.py, an in-memory host with the real one's rules. The job's call to the API is
answered by a route the test sets; nothing reaches the network."""

import json
import unittest

from addon_testing import Err, TestHost, provision_request  # before app

import app


def new_host():
    return TestHost(addon_id="{NAME}", config={"host_url": "https://{NAME}.example.com", "api_base": "https://api.example.com"})


class JobsTest(unittest.TestCase):
    def test_a_provision_enqueues_one_announcement_which_the_job_sends(self):
        host = new_host()
        for _ in range(2):
            host.call(lambda: app.WitWorld().provision(provision_request("app-1", "free")))
        self.assertEqual(len(host.enqueued), 1, "a repeated provision enqueued again")
        host.on_http("https://api.example.com/apps", {"status": 201, "body": "{}"})
        host.call(lambda: app.WitWorld().run_job(host.job(host.enqueued[0])))
        self.assertEqual(json.loads(host.requests[0].body), {"app": "app-1"})
        self.assertIsNotNone(host.kv_string("announced/app-1"))

    def test_a_busy_api_is_retried_and_a_refusal_is_not(self):
        host = new_host().on_http("https://api.example.com/", {"status": 503})
        host.call(lambda: app.WitWorld().provision(provision_request("app-1", "free")))
        with self.assertRaises(Err) as busy:
            host.call(lambda: app.WitWorld().run_job(host.job(host.enqueued[0])))
        self.assertEqual(type(busy.exception.value).__name__, "JobError_Retry")
        refusing = new_host().on_http("https://api.example.com/", {"status": 400, "body": "no"})
        refusing.call(lambda: app.WitWorld().provision(provision_request("app-2", "free")))
        with self.assertRaises(Err) as refused:
            refusing.call(lambda: app.WitWorld().run_job(refusing.job(refusing.enqueued[0])))
        self.assertEqual(type(refused.exception.value).__name__, "JobError_Fail")


if __name__ == "__main__":
    unittest.main()
