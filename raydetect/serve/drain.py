"""Graceful shutdown of the HTTP front door: an admission gate per ingress replica.

While open, every request is counted in flight until its response is returned. `close()` (called through
the ingress deployment's handle by `raydetect serve` on SIGTERM / Ctrl-C, before Serve shuts down) makes new
requests a 503 `shutting_down` with `Retry-After` and `Connection: close`, and reports how many accepted
requests are still in flight; the command waits until none are, so every accepted request gets its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

RETRY_AFTER_S = 5


@dataclass
class AdmissionGate:
    in_flight: int = 0
    draining: bool = False

    def close(self) -> int:
        """Refuse new requests from now on; the number still in flight."""
        self.draining = True
        return self.in_flight

    def middleware(self, app: Any) -> Any:
        """The gate as a plain ASGI middleware around `app` (`api.add_middleware(gate.middleware)`): a request
        counts as in flight until its response is sent. Not FastAPI's `http` middleware, whose call_next
        (Starlette's BaseHTTPMiddleware) streams every response through a task of its own: about 0.6 ms a request."""

        async def gated(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            if self.draining:
                rid = Headers(scope=scope).get("x-request-id", "")
                body = {"error": "shutting_down", "request_id": rid,
                        "detail": "the server is stopping; retry on another replica or later"}  # fmt: skip
                headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
                return await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)
            self.in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                self.in_flight -= 1

        return gated
