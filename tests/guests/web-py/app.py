"""Test-only Python plugin that serves HTTP (world `web`), the same as `tests/guests/web-js`:
a secret per app at provision, `/api/whoami` with the caller's identity and a call count, and
a dashboard with a CSRF-protected form; `/api/later` answers 202, `/api/boom` raises."""

from addon_sdk import Provider, Reply, kv, provision_reply, random_hex
from addon_web import WebHandler, escape, html, json_response, not_found


class WitWorld(Provider):
    def provision(self, req):
        key = f"secret/{req.resource_id}"
        secret = kv.get_string(key) or random_hex(16)
        kv.set_string(key, secret)
        return provision_reply(Reply().set("WEBPY_SECRET", secret))


class IncomingHandler(WebHandler):
    def serve(self, req):
        who = req.identity
        if req.method == "GET" and req.path == "/api/whoami":
            calls = int(kv.get_string(f"calls/{who.resource_id}") or "0") + 1
            kv.set_string(f"calls/{who.resource_id}", str(calls))
            return json_response({"resourceId": who.resource_id, "plan": who.plan, "surface": who.surface,
                                  "appTitle": who.app_title, "calls": calls, "lang": "python"})
        if req.method == "GET" and req.path == "/api/later":
            return json_response({"later": True}, 202)
        if req.method == "GET" and req.path == "/api/boom":
            raise RuntimeError("boom on purpose")
        if req.method == "GET" and req.path == "/dashboard/":
            form = f'<form method="post" action="{who.link("/dashboard/note")}">{who.csrf_field()}</form>'
            head = f"<head>{who.beam()}</head>"
            return html(f'<!DOCTYPE html><html>{head}<body><h1 id="plan">{escape(who.plan)}</h1>{form}</body></html>')
        if req.method == "POST" and req.path == "/dashboard/note":
            kv.set_string(f"note/{who.resource_id}", req.form().get("note", ""))
            return html("<p>saved</p>")
        return not_found()
