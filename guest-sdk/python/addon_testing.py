"""A host double for testing a Python plugin natively, with CPython's ``unittest``: the same
semantics as the Rust SDK's ``addon_sdk::testing``. An in-memory key-value store whose writes
are seen by the call at once and kept only if it succeeds; config, secrets, a settable clock;
jobs enqueued (kept with the call's writes); outbound requests answered by routes the test
sets (none reaches the network); the lines logged; and the web layer's requests, with the
identity the host would pass.

Import it before ``app``: it installs the modules componentize-py would generate
(``wit_world``, ``componentize_py_types``), so the plugin and the SDK run unchanged::

    from addon_testing import TestHost, provision_request
    import app

    host = TestHost(config={"host_url": "https://example.com"})
    reply = host.call(lambda: app.WitWorld().provision(provision_request("app-1", "free")))
"""

import os
import sys
import time
import types as _pytypes
from dataclasses import dataclass
from typing import Any, Callable, Optional

_current: Optional["TestHost"] = None


def _host() -> "TestHost":
    if _current is None:
        raise RuntimeError("a host import was called outside TestHost.call")
    return _current


class Err(Exception):
    """componentize-py's error result: ``value`` is the WIT error."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class Ok:
    value: Any


def _variant(name: str) -> type:
    """A WIT variant case: one ``value``."""
    return dataclass(type(name, (), {"__annotations__": {"value": Any}}))


def _module(name: str, **members: Any) -> _pytypes.ModuleType:
    module = _pytypes.ModuleType(name)
    module.__dict__.update(members)
    sys.modules[name] = module
    return module


@dataclass
class EnvVar:
    key: str
    value: str


@dataclass
class ProvisionRequest:
    resource_id: str
    platform: Any
    app_id: str
    plan: str
    app_title: Optional[str] = None
    api_token: Optional[str] = None
    email: Optional[str] = None
    region: Optional[str] = None
    callback_url: Optional[str] = None
    options: Optional[list] = None


@dataclass
class ChangePlanRequest:
    resource_id: str
    platform: Any
    app_id: str
    previous_plan: str
    plan: str


@dataclass
class DeprovisionRequest:
    resource_id: str
    platform: Any
    app_id: str
    plan: str


@dataclass
class ProvisionReply:
    config: list
    message: Optional[str]


@dataclass
class ChangePlanReply:
    config: list
    message: Optional[str]


@dataclass
class Unavailable:
    message: str
    docs_url: Optional[str]


class Platform:
    BITRISE = "BITRISE"
    XERVO = "XERVO"


@dataclass
class Job:
    id: str
    kind: str
    payload: bytes
    resource_id: Optional[str]
    attempt: int


@dataclass
class RetryLater:
    message: str
    after_ms: Optional[int]


@dataclass
class HttpRequest:
    method: str
    url: str
    headers: list
    body: bytes
    timeout_ms: Optional[int]


@dataclass
class HttpResponse:
    status: int
    headers: list
    body: bytes


class Level:
    TRACE, DEBUG, INFO, WARN, ERROR = "trace", "debug", "info", "warn", "error"


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= 512:
        raise Err(_KvInvalidKey(f"invalid key {key!r}"))


_KvInvalidKey = _variant("KvError_InvalidKey")


def _read(key: str) -> Optional[bytes]:
    host = _host()
    return host._writes[key] if key in host._writes else host.store.get(key)


def _kv_delete(key: str) -> bool:
    _check_key(key)
    had = _read(key) is not None
    _host()._writes[key] = None
    return had


def _kv_cas(key: str, expected: Optional[bytes], value: Optional[bytes]) -> bool:
    _check_key(key)
    if _read(key) != (None if expected is None else bytes(expected)):
        return False
    _host()._writes[key] = None if value is None else bytes(value)
    return True


def _kv_list(prefix: str) -> list:
    host = _host()
    keys = set(host.store) | set(host._writes)
    return sorted(k for k in keys if k.startswith(prefix) and _read(k) is not None)


def _enqueue(kind: str, payload: bytes, delay_ms: int) -> str:
    host = _host()
    job_id = f"job-{len(host.enqueued) + len(host._jobs) + 1}"
    host._jobs.append(Enqueued(job_id, kind, bytes(payload), int(delay_ms)))
    return job_id


_HttpDenied = _variant("HttpError_Denied")


def _send(req: HttpRequest) -> HttpResponse:
    host = _host()
    host.requests.append(req)
    for prefix, answer in host._routes:
        if req.url.startswith(prefix):
            got = answer(req) if callable(answer) else answer
            body = got.get("body", b"")
            body = body.encode() if isinstance(body, str) else bytes(body)
            return HttpResponse(got.get("status", 200), list(got.get("headers", {}).items()), body)
    raise Err(_HttpDenied(f"{req.url}: no TestHost.on_http route answers it"))


class _WitWorld:
    pass


class _IncomingHandler:
    pass


# The `web` world imports wasi:http's `types` too: componentize-py renames ours.
_types = dict(
    EnvVar=EnvVar, ProvisionRequest=ProvisionRequest, ChangePlanRequest=ChangePlanRequest,
    DeprovisionRequest=DeprovisionRequest, ProvisionReply=ProvisionReply, ChangePlanReply=ChangePlanReply,
    Unavailable=Unavailable, Platform=Platform,
    ProviderError_InvalidRequest=_variant("ProviderError_InvalidRequest"),
    ProviderError_Unavailable=_variant("ProviderError_Unavailable"),
    ProviderError_Internal=_variant("ProviderError_Internal"),
)
_module("componentize_py_types", Err=Err, Ok=Ok)
_world = _module("wit_world", WitWorld=_WitWorld)
_world.exports = _module("wit_world.exports", IncomingHandler=_IncomingHandler)
_world.imports = _module("wit_world.imports")
for _name, _members in {
    "types": _types,
    "addon_provider_types": _types,
    "kv": dict(get=lambda k: (_check_key(k), _read(k))[1], set=lambda k, v: (_check_key(k), _host()._writes.__setitem__(k, bytes(v)))[0],
               delete=_kv_delete, list_keys=_kv_list, compare_and_swap=_kv_cas),
    "log": dict(Level=Level, log=lambda level, message: _host().logs.append((level, message))),
    "config": dict(addon_id=lambda: _host().addon_id, get=lambda k: _host().settings.get(k),
                   secret=lambda n: _host().secrets.get(n)),
    "env": dict(now_ms=lambda: _host().now_ms, random_bytes=lambda n: os.urandom(n)),
    "jobs": dict(Job=Job, RetryLater=RetryLater, enqueue=_enqueue,
                 JobError_Retry=_variant("JobError_Retry"), JobError_Fail=_variant("JobError_Fail")),
    "http": dict(Request=HttpRequest, Response=HttpResponse, send=_send, HttpError_Denied=_HttpDenied),
}.items():
    setattr(_world.imports, _name, _module(f"wit_world.imports.{_name}", **_members))


@dataclass
class Enqueued:
    id: str
    kind: str
    payload: bytes
    delay_ms: int

    @property
    def text(self) -> str:
        return self.payload.decode()


class TestHost:
    __test__ = False  # not a test case, for runners that collect by name

    def __init__(self, addon_id: str = "myaddon", config: Optional[dict] = None, secrets: Optional[dict] = None,
                 now_ms: Optional[int] = None) -> None:
        self.addon_id = addon_id
        self.settings = dict(config or {})
        self.secrets = dict(secrets or {})
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.store: dict = {}
        self.enqueued: list = []
        self.logs: list = []
        self.requests: list = []
        self._routes: list = []
        self._writes: dict = {}
        self._jobs: list = []

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one plugin call as the host does: its writes and jobs are kept if it returns,
        dropped if it raises; what it raised is raised again."""
        global _current
        if _current is not None:
            raise RuntimeError("TestHost.call: one call at a time")
        _current, self._writes, self._jobs = self, {}, []
        try:
            out = fn()
            for key, value in self._writes.items():
                if value is None:
                    self.store.pop(key, None)
                else:
                    self.store[key] = value
            self.enqueued.extend(self._jobs)
            return out
        finally:
            _current, self._writes, self._jobs = None, {}, []

    def on_http(self, prefix: str, answer: Any) -> "TestHost":
        """Answer outbound requests whose URL starts with ``prefix``: ``answer(req)`` (or a dict)
        gives ``{"status", "headers", "body"}``."""
        self._routes.append((prefix, answer))
        return self

    def kv(self, key: str) -> Optional[bytes]:
        return self.store.get(key)

    def kv_string(self, key: str) -> Optional[str]:
        value = self.store.get(key)
        return None if value is None else value.decode()

    def kv_keys(self) -> list:
        return sorted(self.store)

    def job(self, enqueued: Enqueued, attempt: int = 1) -> Job:
        """A kept job as ``run_job`` receives it, on its ``attempt``."""
        return Job(enqueued.id, enqueued.kind, enqueued.payload, None, attempt)

    def web(self, handler: Any, method: str = "GET", path: str = "/dashboard/", headers: Optional[dict] = None,
            body: "bytes | str" = b"", identity: Optional[dict] = None) -> "WebAnswer":
        """A request to the plugin's ``IncomingHandler``, as the host forwards it: ``identity``
        (``resource_id``, ``plan``, ``app_title``, ``surface``, ...) becomes the ``x-addon-*``
        headers."""
        passed = dict(headers or {})
        who = {"surface": "dashboard", "platform": "bitrise", "plan": "free", "resource_id": "app-1",
               "app_id": "app-1", "base_path": "", "csrf_token": "csrf-test", **(identity or {})}
        for key, value in who.items():
            if value is not None:
                passed[f"x-addon-{key.replace('_', '-')}"] = str(value)
        data = body.encode() if isinstance(body, str) else bytes(body)
        out = _Outparam()
        self.call(lambda: handler.handle(_IncomingRequest(method, path, passed, data), out))
        return WebAnswer(out.status, out.headers, out.body.decode("utf-8", "replace"))


@dataclass
class WebAnswer:
    status: int
    headers: dict
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)


def provision_request(resource_id: str, plan: str, **more: Any) -> ProvisionRequest:
    """A provision request as a platform would send it; keywords override fields."""
    return ProvisionRequest(resource_id, Platform.BITRISE, resource_id, plan, **{"options": [], **more})


def change_plan_request(resource_id: str, previous_plan: str, plan: str) -> ChangePlanRequest:
    return ChangePlanRequest(resource_id, Platform.BITRISE, resource_id, previous_plan, plan)


def deprovision_request(resource_id: str, plan: str) -> DeprovisionRequest:
    return DeprovisionRequest(resource_id, Platform.BITRISE, resource_id, plan)


# `wasi:http/types` and `wasi:io/streams` as the web layer uses them.
_METHODS = {name: _variant(f"Method_{name.capitalize()}") for name in
            ("get", "head", "post", "put", "delete", "connect", "options", "trace", "patch")}
_MethodOther = _variant("Method_Other")
_Closed = _variant("StreamError_Closed")


class _Stream:
    def __init__(self, body: bytes) -> None:
        self.body: Optional[bytes] = body

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def blocking_read(self, n: int) -> bytes:
        if self.body is None:
            raise Err(_Closed(None))
        body, self.body = self.body, None
        return body


class _IncomingRequest:
    def __init__(self, method: str, path: str, headers: dict, body: bytes) -> None:
        self._method, self._path, self._headers, self._body = method, path, headers, body

    def method(self) -> Any:
        case = _METHODS.get(self._method.lower())
        return case(None) if case else _MethodOther(self._method)

    def path_with_query(self) -> str:
        return self._path

    def headers(self) -> Any:
        pairs = [(k, v.encode()) for k, v in self._headers.items()]
        return _pytypes.SimpleNamespace(entries=lambda: pairs)

    def consume(self) -> Any:
        return _pytypes.SimpleNamespace(stream=lambda: _Stream(self._body))


class _Outparam:
    status = 0
    headers: dict = {}
    body = b""


class _Fields:
    @staticmethod
    def from_list(pairs: list) -> "_Fields":
        fields = _Fields()
        fields.pairs = [(k, bytes(v).decode()) for k, v in pairs]
        return fields


class _Sink:
    def __init__(self, response: "_OutgoingResponse") -> None:
        self.response = response

    def write(self) -> "_Writer":
        return _Writer(self.response)


class _Writer:
    def __init__(self, response: "_OutgoingResponse") -> None:
        self.response = response

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def blocking_write_and_flush(self, chunk: bytes) -> None:
        self.response.chunks.append(bytes(chunk))


class _OutgoingResponse:
    def __init__(self, fields: _Fields) -> None:
        self.fields, self.status, self.chunks, self.out = fields, 200, [], None

    def set_status_code(self, status: int) -> None:
        self.status = status

    def body(self) -> _Sink:
        return _Sink(self)


class _ResponseOutparam:
    @staticmethod
    def set(out: _Outparam, result: Ok) -> None:
        response = result.value
        response.out = out
        out.status, out.headers = response.status, dict(response.fields.pairs)


class _OutgoingBody:
    @staticmethod
    def finish(sink: _Sink, trailers: Any) -> None:
        sink.response.out.body = b"".join(sink.response.chunks)


_world.imports.streams = _module("wit_world.imports.streams", StreamError_Closed=_Closed)
_world.imports.wasi_http_types = _module(
    "wit_world.imports.wasi_http_types", Fields=_Fields, OutgoingResponse=_OutgoingResponse,
    ResponseOutparam=_ResponseOutparam, OutgoingBody=_OutgoingBody, IncomingRequest=_IncomingRequest,
    Method_Other=_MethodOther, **{f"Method_{k.capitalize()}": v for k, v in _METHODS.items()},
)
