"""addon-sdk for Python plugins: the host's imports (``addon:provider@0.1.2``) with the same
shape as the Rust SDK — replies with variables and a message, errors that map to the same
statuses, a key-value store with string and JSON helpers, logging, config, secrets, time and
randomness, jobs and outbound HTTP. Build with
``componentize-py -d wit -w plugin componentize app -p . -p SDK_DIR`` (``-w worker`` for a
plugin that enqueues jobs and overrides ``run_job``).

A plugin's ``app.py`` defines ``class WitWorld(addon_sdk.Provider)`` and overrides
``provision(self, req)``, and optionally ``change_plan`` and ``deprovision``. Request fields are
snake_case (``req.resource_id``, ``req.app_title``, ``req.plan``); ``req.platform.name`` is
``"BITRISE"`` or ``"XERVO"``; absent options are ``None``.
"""

import json
from typing import Any, Optional

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import config as _config
from wit_world.imports import env as _env
from wit_world.imports import http as _http
from wit_world.imports import jobs as _jobs
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
try:
    from wit_world.imports import types
except ImportError:  # the `web` world also imports wasi:http's `types`: ours is renamed
    from wit_world.imports import addon_provider_types as types


class Reply:
    """A provision or plan-change reply: ``Reply().set("MY_URL", url).message("Ready.")``."""

    def __init__(self) -> None:
        self.vars: list[types.EnvVar] = []
        self.text: Optional[str] = None

    def set(self, key: str, value: Any) -> "Reply":
        self.vars.append(types.EnvVar(key, str(value)))
        return self

    def message(self, text: str) -> "Reply":
        self.text = text
        return self


def invalid(message: str) -> Err:
    """The request is wrong (unknown option, refused plan change): 422 to the platform."""
    return Err(types.ProviderError_InvalidRequest(message))


def unavailable(message: str, docs_url: Optional[str] = None) -> Err:
    """Not now (an upstream is down): 503 with Retry-After, optionally a docs link."""
    return Err(types.ProviderError_Unavailable(types.Unavailable(message, docs_url)))


def internal(message: str) -> Err:
    """The plugin failed: 500, and the platform retries."""
    return Err(types.ProviderError_Internal(message))


class _Kv:
    """The add-on's key-value store: a call's writes are kept only if it succeeds."""

    def _call(self, f, *args):
        try:
            return f(*args)
        except Err as e:
            raise internal(f"key-value store: {type(e.value).__name__}: {e.value.value}")

    def get(self, key: str) -> Optional[bytes]:
        return self._call(_kv.get, key)

    def set(self, key: str, value: bytes) -> None:
        self._call(_kv.set, key, value)

    def get_string(self, key: str) -> Optional[str]:
        value = self.get(key)
        return None if value is None else value.decode()

    def set_string(self, key: str, value: str) -> None:
        self.set(key, value.encode())

    def get_json(self, key: str) -> Any:
        text = self.get_string(key)
        return None if text is None else json.loads(text)

    def set_json(self, key: str, value: Any) -> None:
        self.set_string(key, json.dumps(value))

    def delete(self, key: str) -> bool:
        return self._call(_kv.delete, key)

    def list_keys(self, prefix: str = "") -> list[str]:
        return self._call(_kv.list_keys, prefix)

    def compare_and_swap_string(self, key: str, expected: Optional[str], value: Optional[str]) -> bool:
        """Set ``key`` to ``value`` only if it holds ``expected`` (None: absent); True if it did."""
        encode = lambda s: None if s is None else s.encode()
        return self._call(_kv.compare_and_swap, key, encode(expected), encode(value))


kv = _Kv()


class log:
    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


def addon_id() -> str:
    return _config.addon_id()


def config(key: str) -> Optional[str]:
    """A plain setting from ``[addon.config]``."""
    return _config.get(key)


def secret(name: str) -> Optional[str]:
    """A secret from ``[addon.secrets]``."""
    return _config.secret(name)


def now_ms() -> int:
    return _env.now_ms()


def random_hex(n: int) -> str:
    """``n`` random bytes as 2n lowercase hex digits, from the host's CSPRNG."""
    return bytes(_env.random_bytes(n)).hex()


class Provider(WitWorld):
    """Override ``provision`` (and optionally ``change_plan``, ``deprovision``); return a
    ``Reply`` or ``None``, raise ``invalid(...)``, ``unavailable(...)`` or ``internal(...)``."""

    def provision(self, req: types.ProvisionRequest) -> types.ProvisionReply:
        raise internal("provision is not implemented")

    def change_plan(self, req: types.ChangePlanRequest) -> types.ChangePlanReply:
        return types.ChangePlanReply([], None)

    def deprovision(self, req: types.DeprovisionRequest) -> None:
        return None

    def run_job(self, job: _jobs.Job) -> None:
        """Run a job this plugin enqueued (world ``worker``): return to succeed, raise
        ``retry(...)`` or ``fail(...)``; anything else raised is retried."""
        raise fail(f"this plugin runs no jobs (got one of kind `{job.kind}`)")


def provision_reply(reply: Reply) -> types.ProvisionReply:
    return types.ProvisionReply(reply.vars, reply.text)


def change_plan_reply(reply: Reply) -> types.ChangePlanReply:
    return types.ChangePlanReply(reply.vars, reply.text)


def enqueue(kind: str, payload: "bytes | str" = b"", delay_ms: int = 0) -> str:
    """Enqueue a job of ``kind``, kept only if this call succeeds; returns its id."""
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    try:
        return _jobs.enqueue(kind, data, delay_ms)
    except Err as e:
        raise internal(f"enqueueing a job: {e.value}")


def retry(message: str, after_ms: Optional[int] = None) -> Err:
    """From ``run_job``: try again after the host's backoff, or no sooner than ``after_ms``."""
    return Err(_jobs.JobError_Retry(_jobs.RetryLater(message, after_ms)))


def fail(message: str) -> Err:
    """From ``run_job``: give up; the job goes to the dead-letter list."""
    return Err(_jobs.JobError_Fail(message))


class Response:
    def __init__(self, raw: "_http.Response") -> None:
        self.status = raw.status
        self.headers = raw.headers
        self.body = bytes(raw.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.text())


class HttpError(Exception):
    """``kind`` is ``denied``, ``invalid``, ``timeout``, ``too-large`` or ``failed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def send(method: str, url: str, headers: Optional[dict] = None, body: "bytes | str" = b"", timeout_ms: Optional[int] = None) -> Response:
    """Outbound HTTP through the host, to the origins the add-on allows (``allowed_outbound``)."""
    data = body.encode() if isinstance(body, str) else bytes(body)
    pairs = [(k, str(v)) for k, v in (headers or {}).items()]
    try:
        return Response(_http.send(_http.Request(method, url, pairs, data, timeout_ms)))
    except Err as e:
        kind = type(e.value).__name__.split("_")[-1].lower().replace("toolarge", "too-large")
        raise HttpError(kind, str(e.value.value))
