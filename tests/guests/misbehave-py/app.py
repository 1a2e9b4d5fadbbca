"""A test-only Python plugin: the plan picks how it misbehaves, so the host's deadline and
memory cap are checked against a real CPython."""

from addon_sdk import Provider, Reply, provision_reply


class WitWorld(Provider):
    def provision(self, req):
        if req.plan == "loop":
            while True:
                pass
        if req.plan == "memory":
            hoard = bytearray(1 << 30)
            return provision_reply(Reply().set("MISBEHAVE_LEN", len(hoard)))
        return provision_reply(Reply().set("MISBEHAVE_PLAN", req.plan))
