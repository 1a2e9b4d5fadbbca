"""An add-on provider with pages: each provisioned app gets a URL and a secret; its users reach
the add-on's dashboard through the platform's SSO, and its builds call the add-on's build API
with the token the host issues (`{PREFIX}_API_TOKEN`). The host authenticates every request
and passes who is calling in `req.identity`; dashboard forms carry its CSRF field. `build.py`
builds for the `web` world, because `class IncomingHandler` is defined."""

from addon_sdk import Provider, Reply, addon_id, change_plan_reply, config, internal, kv, provision_reply, random_hex
from addon_web import WebHandler, escape, html, json_response, not_found, redirect


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
        reply = Reply().set(f"{prefix()}_URL", f"{base.rstrip('/')}/apps/{req.resource_id}").set(f"{prefix()}_SECRET", secret)
        return provision_reply(reply)

    def change_plan(self, req):
        return change_plan_reply(Reply().message(f"Now on {req.plan}."))

    def deprovision(self, req):
        kv.delete(f"secret/{req.resource_id}")
        kv.delete(f"note/{req.resource_id}")


class IncomingHandler(WebHandler):
    def serve(self, req):
        who = req.identity
        if req.method == "GET" and req.path == "/dashboard/":
            note = kv.get_string(f"note/{who.resource_id}") or ""
            # Well-formed XHTML: Bitrise's kit parses the page its SSO login answers as XML.
            return html(
                f'<!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml"><head><title>{escape(addon_id())}</title>'
                f"{who.beam()}</head><body><h1>{escape(who.app_title or who.resource_id)}</h1>"
                f"<p>Plan: <b>{escape(who.plan)}</b></p>"
                f'<form method="post" action="{escape(who.link("/dashboard/note"))}">{who.csrf_field()}'
                f'<input name="note" value="{escape(note)}"/><button type="submit">Save</button></form></body></html>'
            )
        if req.method == "POST" and req.path == "/dashboard/note":
            kv.set_string(f"note/{who.resource_id}", req.form().get("note", ""))
            return redirect(who.link("/dashboard/"))
        if req.method == "GET" and req.path == "/api/status":
            return json_response({"app": who.resource_id, "plan": who.plan, "note": kv.get_string(f"note/{who.resource_id}")})
        return not_found()
