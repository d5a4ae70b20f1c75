"""Graceful shutdown of the HTTP front door: an admission gate per ingress replica.

While open, every request is counted in flight until its response is returned. `close()` (called through
the ingress deployment's handle by `raydetect serve` on SIGTERM / Ctrl-C, before Serve shuts down) makes new
requests a 503 `shutting_down` with `Retry-After` and `Connection: close`, and reports how many accepted
requests are still in flight; the command waits until none are, so every accepted request gets its answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

RETRY_AFTER_S = 5


@dataclass
class AdmissionGate:
    in_flight: int = 0
    draining: bool = False

    def close(self) -> int:
        """Refuse new requests from now on; the number still in flight."""
        self.draining = True
        return self.in_flight

    async def __call__(self, request: Request, call_next):
        """FastAPI `http` middleware."""
        if self.draining:
            body = {"error": "shutting_down", "detail": "the server is stopping; retry on another replica or later",
                    "request_id": request.headers.get("x-request-id", "")}  # fmt: skip
            headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
            return JSONResponse(body, status_code=503, headers=headers)
        self.in_flight += 1
        try:
            return await call_next(request)
        finally:
            self.in_flight -= 1
