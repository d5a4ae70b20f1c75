"""The ingress's admission gate (serve/drain.py) as the ASGI middleware it is, without Ray."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from raydetect.serve.drain import RETRY_AFTER_S, AdmissionGate


def _app(gate: AdmissionGate, release: asyncio.Event, seen: list[int]) -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict:
        seen.append(gate.in_flight)
        await release.wait()
        return {"ok": True}

    app.add_middleware(gate.middleware)
    return app


def test_the_gate_counts_requests_until_answered_then_refuses_new_ones_with_a_503():
    async def scenario() -> None:
        gate, release, seen = AdmissionGate(), asyncio.Event(), []
        transport = httpx.ASGITransport(app=_app(gate, release, seen))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            pending = [asyncio.create_task(client.get("/slow")) for _ in range(3)]
            while len(seen) < 3:
                await asyncio.sleep(0.01)
            assert gate.close() == 3  # all three accepted and in flight
            refused = await client.get("/slow", headers={"x-request-id": "r-1"})
            assert refused.status_code == 503
            assert refused.json()["error"] == "shutting_down" and refused.json()["request_id"] == "r-1"
            assert refused.headers["retry-after"] == str(RETRY_AFTER_S) and refused.headers["connection"] == "close"
            release.set()
            answers = await asyncio.gather(*pending)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert gate.in_flight == 0 and len(seen) == 3  # the refused request never reached the route

    asyncio.run(scenario())
