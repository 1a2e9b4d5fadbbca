"""An add-on provider: each provisioned app gets a URL and a secret, made once and kept in
the add-on's key-value store; a deprovision forgets the secret."""

from addon_sdk import Provider, Reply, addon_id, change_plan_reply, config, internal, kv, log, provision_reply, random_hex


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
        log.info(f"provisioned {req.resource_id} on {req.plan}")
        reply = Reply().set(f"{prefix()}_URL", f"{base.rstrip('/')}/apps/{req.resource_id}").set(f"{prefix()}_SECRET", secret)
        return provision_reply(reply)

    def change_plan(self, req):
        return change_plan_reply(Reply().message(f"Now on {req.plan}."))

    def deprovision(self, req):
        kv.delete(f"secret/{req.resource_id}")
