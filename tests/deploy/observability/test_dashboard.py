"""The dashboard in Debian's headless Chromium: after its JavaScript ran, the page shows the world's figures.

The world (tests/deploy/observability/world.py) has known numbers — 5 ops, 3 conflict decisions on two
entities, 1 dead letter, 3 devices on task v2, one device that never pulls — so the test checks that those
exact figures reach the DOM and that the chart areas of the screenshot hold drawn bars, not an empty panel.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.observability.dashboard import DashboardServer
from tests.deploy.observability.world import observed_world, until
from tests.support.png import read_png
from tests.support.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1280,1500",
    "--virtual-time-budget=6000",
)
BAR = (0x2B, 0x6C, 0xB0)
BAD = (0xC5, 0x30, 0x30)


async def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """Run Chromium on `url` with its own profile; its stdout."""
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:8]}"
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        *extra,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def figure(dom: str, element_id: str) -> str:
    """The data-value of an element."""
    match = re.search(rf'id="{element_id}"[^>]*data-value="([^"]*)"', dom)
    assert match, f"{element_id} has no value in the DOM"
    return match.group(1)


def bar_values(dom: str) -> dict[str, float]:
    """data-label → data-value of every drawn bar."""
    return {
        html.unescape(label): float(value)
        for label, value in re.findall(r'<rect class="bar" data-label="([^"]*)" data-value="([^"]*)"', dom)
    }


async def test_the_dashboard_draws_the_live_figures_in_a_real_browser(services: Services, tmp_path: Path) -> None:
    async with observed_world(services, tmp_path) as world:
        settings = world.settings.model_copy(
            update={
                "gateway_url": world.gateway_url,
                "projector_url": world.projector_url,
                "dashboard_refresh_s": 0.5,
            }
        )
        server = DashboardServer(settings)
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:

                async def settled() -> bool:
                    body: dict[str, Any] = (await client.get("/api/snapshot")).json()
                    return (
                        body["pg"]["decisions_total"] == 3
                        and (body["kafka"]["dead_letters"] or {}).get("records") == 1
                        and len(body["history"]) >= 2
                        and body["kafka"]["total_lag"] == 0
                    )

                await until(settled, "the dashboard to read the world")
                health = await client.get("/healthz")
                assert health.json() == {"status": "ok", "kafka": "ok", "postgresql": "ok"}
                metrics = (await client.get("/metrics")).text
                assert re.search(r'keel_dlq_records\{[^}]*topic="[^"]+\.dlq"[^}]*\} 1\.0', metrics)
                assert re.search(
                    r'keel_devices_schema_version\{[^}]*entity_type="task"[^}]*version="2"[^}]*\} 3\.0', metrics
                )
            dom = await chromium(f"{url}/", tmp_path, "--dump-dom")
            shot = tmp_path / "dashboard.png"

            await chromium(f"{url}/", tmp_path, f"--screenshot={shot}")
        finally:
            await server.stop()

    # The figures, as the page's JavaScript put them into the DOM (the script's own text left out).
    dom = re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL)
    assert figure(dom, "fig-conflicts") == "3"
    assert figure(dom, "fig-dlq") == "1"
    assert figure(dom, "fig-applied") == str(world.ops)
    assert figure(dom, "fig-devices") == "3"
    assert figure(dom, "fig-lag") == "0"
    bars = bar_values(dom)
    assert bars["task hot-1"] == 2
    assert bars["task hot-2"] == 1
    assert bars["task.title"] == 2
    assert bars["task.description"] == 1
    assert bars["task v2"] == 3
    assert bars["DecodeError"] == 1
    assert bars[f"carol-{world.settings.topic_prefix}"] > 0

    # The screenshot: each chart area holds pixels of its bars' colour (an empty panel holds none).
    layout_text = re.search(r'<pre id="layout"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    assert layout_text, "the page wrote no layout"
    layout = json.loads(html.unescape(layout_text.group(1)))
    image = read_png(shot)

    for chart, color in (
        ("chart-hot-entities", BAR),
        ("chart-hot-fields", BAR),
        ("chart-versions", BAR),
        ("chart-backlog", BAR),
        ("chart-throughput", BAR),
        ("chart-dlq", BAD),
    ):
        box = layout[chart]
        assert box["bars"] > 0, f"{chart}: no bars in the DOM"
        painted = image.count((box["x"], box["y"], box["w"], box["h"]), color)
        assert painted > 100, f"{chart}: only {painted} bar-coloured pixels in {box}"
