"""addon-web for Python plugins: serve the add-on's dashboard and build API from the plugin
(the ``web`` world of ``wit/``, whose export is the standard ``wasi:http/incoming-handler``).
The host authenticates every request and passes who is calling in ``x-addon-*`` headers;
this module reads them into ``req.identity``.

    from addon_web import WebHandler, html, json_response, not_found

    class IncomingHandler(WebHandler):
        def serve(self, req):
            if req.method == "GET" and req.path == "/dashboard/":
                return html(f"<h1>{escape(req.identity.plan)}</h1>")
            return not_found()

Build with ``componentize-py -d wit -w web componentize app``; the ``web`` world includes
``worker``, whose ``run_job`` the SDK's ``Provider`` already answers.
"""

import html as _html
import json
import traceback
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qsl, unquote

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import log as _log
from wit_world.imports import streams
from wit_world.imports import wasi_http_types as http


def escape(text: str) -> str:
    """Escape text for HTML (and XHTML) content and attribute values."""
    return _html.escape(str(text), quote=True)


@dataclass
class Response:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: "bytes | str" = b""


def html(page: str, status: int = 200) -> Response:
    return Response(status, {"content-type": "text/html; charset=utf-8"}, page)


def json_response(value, status: int = 200) -> Response:
    return Response(status, {"content-type": "application/json"}, json.dumps(value))


def text(value: str, status: int = 200) -> Response:
    return Response(status, {"content-type": "text/plain; charset=utf-8"}, str(value))


def redirect(location: str) -> Response:
    return Response(303, {"location": location}, b"")


def not_found() -> Response:
    return Response(404, {"content-type": "text/plain; charset=utf-8"}, "not found")


@dataclass
class Identity:
    surface: str
    resource_id: str
    platform: str
    app_id: str
    plan: str
    app_title: Optional[str]
    # The email the SSO post named: no platform signs it; show it, never authorise by it.
    unverified_email: Optional[str]
    csrf_token: Optional[str]
    # This answer's script nonce: the host's content security policy runs an inline
    # <script nonce="..."> only with it (beam() uses it).
    csp_nonce: Optional[str]
    base_path: str

    def csrf_field(self) -> str:
        """A hidden form field with the CSRF token: the host refuses dashboard posts without it."""
        return f'<input type="hidden" name="_csrf" value="{escape(self.csrf_token or "")}"/>'

    def link(self, path: str) -> str:
        """An absolute path on this host for one of the add-on's routes."""
        return f"{self.base_path}{path}"

    def beam(self) -> str:
        """Bitrise's Beam navigation header for ``<head>`` (every page reached through
        Bitrise's SSO must show it); empty elsewhere."""
        if self.platform != "bitrise" or self.surface != "dashboard":
            return ""

        def js(s: str) -> str:
            out = json.dumps(s)
            for c in "<>&'":
                out = out.replace(c, "\\u%04x" % ord(c))
            return out

        init = f"Beam.init({{ app_slug: {js(self.resource_id)}, app_name: {js(self.app_title or self.resource_id)} }});"
        # The host's content security policy runs an inline script only with this answer's nonce.
        nonce = f' nonce="{escape(self.csp_nonce)}"' if self.csp_nonce else ""
        return (
            '<script src="https://unpkg.com/@bitrise/beam@latest/dist/beam.min.js"></script>'
            f"<script{nonce}>"
            '\n//<![CDATA[\ndocument.addEventListener("DOMContentLoaded", function () { '
            f"if (window.Beam) {{ {init} }} }});\n//]]>\n</script>"
        )


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    identity: Identity

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def form(self) -> dict:
        return dict(parse_qsl(self.text()))


def _identity(headers: dict) -> Identity:
    decoded = lambda name: unquote(headers[name]) if name in headers else None
    return Identity(
        surface="api" if headers.get("x-addon-surface") == "api" else "dashboard",
        resource_id=headers.get("x-addon-resource-id", ""),
        platform=headers.get("x-addon-platform", ""),
        app_id=headers.get("x-addon-app-id", ""),
        plan=headers.get("x-addon-plan", ""),
        app_title=decoded("x-addon-app-title"),
        unverified_email=decoded("x-addon-unverified-email"),
        csrf_token=headers.get("x-addon-csrf-token"),
        csp_nonce=headers.get("x-addon-csp-nonce"),
        base_path=headers.get("x-addon-base-path", ""),
    )


def _read(request: http.IncomingRequest) -> Request:
    method = request.method()
    name = type(method).__name__.removeprefix("Method_").upper()
    if isinstance(method, http.Method_Other):
        name = method.value.upper()
    target = request.path_with_query() or "/"
    path, _, query = target.partition("?")
    headers = {k.lower(): bytes(v).decode("utf-8", "replace") for k, v in request.headers().entries()}
    body = bytearray()
    incoming = request.consume()
    with incoming.stream() as stream:
        while True:
            try:
                body += stream.blocking_read(65536)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
    return Request(name, path, dict(parse_qsl(query)), headers, bytes(body), _identity(headers))


def _write(answer: Response, response_out: http.ResponseOutparam) -> None:
    body = answer.body.encode() if isinstance(answer.body, str) else bytes(answer.body)
    fields = http.Fields.from_list([(k.lower(), str(v).encode()) for k, v in answer.headers.items()])
    outgoing = http.OutgoingResponse(fields)
    outgoing.set_status_code(answer.status)
    sink = outgoing.body()
    http.ResponseOutparam.set(response_out, Ok(outgoing))
    # The stream is a child of the body: it goes before the body is finished.
    with sink.write() as stream:
        for at in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[at : at + 4096])
    http.OutgoingBody.finish(sink, None)


class WebHandler(exports.IncomingHandler):
    """Override ``serve(req)`` and return a ``Response``. An exception answers a generic 500;
    the exception and its traceback (file and line) go to the add-on's log, for its deployers."""

    def serve(self, req: Request) -> Response:
        return not_found()

    def handle(self, request: http.IncomingRequest, response_out: http.ResponseOutparam) -> None:
        req = None
        try:
            req = _read(request)
            answer = self.serve(req)
        except Exception as e:  # the plugin's own failure: logged, and a 500 without its details
            where = f"{req.method} {req.path}" if req is not None else "reading the request"
            trace = "".join(traceback.format_exception(e))
            _log.log(_log.Level.ERROR, f"web handler failed on {where}: {e}\n{trace}")
            answer = Response(
                500,
                {"content-type": "text/plain; charset=utf-8"},
                "the add-on failed; its deployers can read why in its log",
            )
        _write(answer, response_out)
