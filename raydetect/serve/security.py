"""Access control and the audit trail of the serving API. Plain Python: no Ray, no FastAPI.

API key: `$RAYDETECT_API_KEY` wins; else the secret file named by `$RAYDETECT_API_KEY_FILE` or by the
`serve.api_key_file` setting (first line, surrounding whitespace stripped). With neither, auth is off.
A configured file that is missing or empty is an error (fail closed), never a silent "auth off".
The key is never logged, printed, put in a repr or returned by any endpoint.

Audit log: one JSON object per line per prediction (and per rejected request): request id, sha256 of the
bytes, probability, decision, model version, time, client. Never image bytes, never headers.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

API_KEY_ENV = "RAYDETECT_API_KEY"
API_KEY_FILE_ENV = "RAYDETECT_API_KEY_FILE"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiKeyError(RuntimeError):
    """The configured key source is unusable (missing or empty secret file)."""


@dataclass(frozen=True)
class ApiKey:
    """A secret that compares in constant time and never shows itself."""

    _secret: bytes
    source: str  # where it came from, for the startup message: "env RAYDETECT_API_KEY" or "file /path"

    def matches(self, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(self._secret, presented.encode("utf-8", "surrogateescape"))

    def __repr__(self) -> str:  # keep the secret out of tracebacks, logs and reprs
        return f"ApiKey(source={self.source!r}, secret=***)"

    __str__ = __repr__


def load_api_key(key_file: str | None = None, environ: dict[str, str] | None = None) -> ApiKey | None:
    """The configured key, or None when auth is off (no env var, no file configured)."""
    env = os.environ if environ is None else environ
    value = env.get(API_KEY_ENV, "").strip()
    if value:
        return ApiKey(value.encode(), f"env {API_KEY_ENV}")
    path = env.get(API_KEY_FILE_ENV) or key_file
    if not path:
        return None
    file = Path(path).expanduser()
    try:
        text = file.read_text().strip().splitlines()
    except OSError as exc:
        raise ApiKeyError(f"API key file {file} cannot be read ({type(exc).__name__})") from exc
    if not text or not text[0].strip():
        raise ApiKeyError(f"API key file {file} is empty")
    return ApiKey(text[0].strip().encode(), f"file {file}")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def request_id(candidate: str | None = None) -> str:
    """A caller's or Serve's request id when it is a sane token, else a fresh one."""
    if candidate and _REQUEST_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends one JSON line per event to a local file (O_APPEND, one write per line, so several replicas
    on one node can share it). `path=None` keeps the lines in memory only (tests, dry runs)."""

    FIELDS = ("time", "event", "request_id", "client", "forwarded_for", "route", "sha256", "prob_ai", "decision",
              "model_name", "model_version", "latency_ms", "status", "reason")

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **fields: Any) -> dict[str, Any]:
        unknown = set(fields) - set(self.FIELDS)
        if unknown:  # a guard against ever logging request bodies or headers by accident
            raise ValueError(f"audit records take only {self.FIELDS}; got {sorted(unknown)}")
        record = {"time": utc_now(), **{k: v for k, v in fields.items() if v is not None}}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self.last = record
            if self.path is not None:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        return record
