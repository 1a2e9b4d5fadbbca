"""The `credentials` example in Python, behaving exactly like the Rust one: each provisioned
app gets `<ADDON>_HOST_URL` and `<ADDON>_AUTH_SECRET`; the secret is made once
(compare-and-swap, so two racing calls keep one) and forgotten on deprovision."""

from addon_sdk import Provider, Reply, change_plan_reply, config, internal, kv, log, provision_reply, random_hex, addon_id


def prefix() -> str:
    return addon_id().upper().replace("-", "_")


def secret_key(resource_id: str) -> str:
    return f"secret/{resource_id}"


def host_url(resource_id: str) -> str:
    base = config("host_url")
    if base is None:
        raise internal("config `host_url` is not set")
    return f"{base.rstrip('/')}/apps/{resource_id}"


class WitWorld(Provider):
    def provision(self, req):
        key = secret_key(req.resource_id)
        secret = kv.get_string(key)
        if secret is None:
            fresh = random_hex(24)
            secret = fresh if kv.compare_and_swap_string(key, None, fresh) else kv.get_string(key)
            if secret is None:
                raise internal("secret vanished")
        log.info(f"issued credentials for {req.resource_id} ({req.platform.name.lower()})")
        reply = (
            Reply()
            .set(f"{prefix()}_HOST_URL", host_url(req.resource_id))
            .set(f"{prefix()}_AUTH_SECRET", secret)
            .message("Credentials issued. Use them from your builds.")
        )
        return provision_reply(reply)

    def change_plan(self, req):
        log.info(f"{req.resource_id} moves from {req.previous_plan} to {req.plan}")
        return change_plan_reply(Reply().message(f"Now on {req.plan}."))

    def deprovision(self, req):
        existed = kv.delete(secret_key(req.resource_id))
        log.info(f"revoked credentials for {req.resource_id} (existed: {str(existed).lower()})")
