"""An add-on provider with work after the reply: each provisioned app gets a URL and a secret,
and a job tells the add-on's own API about the app. The host runs the job after the platform
has its answer (Bitrise allows 10 s for a provision) and retries it with backoff; `send`
reaches only the origins in `allowed_outbound` (`addon-host test` answers them from a stub and
lists them). `build.py` builds for the `worker` world, because `run_job` is defined."""

import json

from addon_sdk import (Provider, Reply, addon_id, change_plan_reply, config, enqueue, fail, internal, kv, log,
                       now_ms, provision_reply, random_hex, retry, send)


def prefix() -> str:
    return addon_id().upper().replace("-", "_")


class WitWorld(Provider):
    def provision(self, req):
        base = config("host_url")
        if base is None:
            raise internal("config `host_url` is not set")
        key = f"secret/{req.resource_id}"
        secret = kv.get_string(key)
        if secret is None:
            secret = random_hex(24)
            kv.set_string(key, secret)
            # Kept only if this provision succeeds, like its writes.
            enqueue("announce", req.resource_id)
        reply = Reply().set(f"{prefix()}_URL", f"{base.rstrip('/')}/apps/{req.resource_id}").set(f"{prefix()}_SECRET", secret)
        return provision_reply(reply)

    def change_plan(self, req):
        return change_plan_reply(Reply().message(f"Now on {req.plan}."))

    def deprovision(self, req):
        kv.delete(f"secret/{req.resource_id}")

    def run_job(self, job):
        app = bytes(job.payload).decode()
        if job.kind != "announce":
            raise fail(f"unknown job kind {job.kind}")
        api = config("api_base")
        if api is None:
            log.warn("config `api_base` is not set: the app is not announced")
            return None
        answer = send("POST", f"{api.rstrip('/')}/apps", {"content-type": "application/json"}, json.dumps({"app": app}))
        # Busy or down: the host tries again later (any other exception is retried too).
        if answer.status == 429 or answer.status >= 500:
            raise retry(f"the API answered {answer.status}")
        if not 200 <= answer.status < 300:
            raise fail(f"the API refused the app: {answer.status} {answer.text()}")
        kv.set_string(f"announced/{app}", str(now_ms() // 1000))
        log.info(f"announced {app} (attempt {job.attempt})")
        return None
