"""The health endpoint answers liveness and readiness as JSON and refuses what it does not serve."""

from __future__ import annotations

import httpx

from consumers.health import HealthReport, HealthServer


async def test_health_and_readiness_follow_the_probe() -> None:
    report = HealthReport(alive=True, ready=False, details={"state": "starting"})
    server = HealthServer(lambda: report)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            health = await client.get("/health")
            assert (health.status_code, health.json()) == (200, {"alive": True, "ready": False, "state": "starting"})
            assert (await client.get("/ready")).status_code == 503
            report = HealthReport(alive=False, ready=False)
            assert (await client.get("/health")).status_code == 503
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/health")).status_code == 405
    finally:
        await server.stop()
