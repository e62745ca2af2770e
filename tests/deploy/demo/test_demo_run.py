"""`keel demo` end to end on the real stack: a short run with standard chaos converges, its report holds the
invariants, Toxiproxy is restored, and the HTML report renders its plots in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.demo.plan import IncidentKind, make_plan
from tests.deploy.demo.png import Image, read_png
from tests.support.services import Services

pytestmark = pytest.mark.integration

KEEL = str(Path(sys.executable).with_name("keel"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Colours of plot lines and bars in deploy/demo/html_report.py: acknowledged, projected, hotspot bars.
PLOT_COLOURS = {"acknowledged": (0x25, 0x63, 0xEB), "projected": (0x16, 0xA3, 0x4A), "hotspots": (0x7C, 0x3A, 0xED)}


def run_demo(services: Services, report: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    command = [KEEL, "demo", "--report", str(report), *args]
    if services.toxiproxy_url:
        command += ["--toxiproxy-url", services.toxiproxy_url]
    env = {
        **os.environ,
        "KEEL_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "KEEL_REGISTRY_URL": services.registry_url,
        "KEEL_DATABASE_URL": services.database_url,
        **services.kafka_env(),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    assert done.returncode == 0, f"keel demo exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def assert_invariants(
    report: dict[str, Any], seed: int, devices: int, tenants: int, duration: float, chaos: str
) -> None:
    plan = make_plan(seed, devices=devices, tenants=tenants, duration_s=duration, chaos=chaos)
    assert report["plan_fingerprint"] == plan.fingerprint(), "the run played the plan of its seed"
    assert (report["devices"], report["tenants"], report["seed"], report["chaos"]) == (devices, tenants, seed, chaos)
    assert report["converged"] is True, report["checker"]["findings"]
    assert (report["lost"], report["duplicated"]) == (0, 0)
    ops = report["ops"]
    assert ops["pending_on_devices"] == 0
    assert report["acked_ops"] == report["projected_ops"] == ops["written"] - ops["quarantined"] > 0
    assert report["checker"]["seq_gaps"] == report["checker"]["seq_inversions"] == 0
    assert plan.contended_writes > 0
    assert report["conflicts"] >= 1
    assert len(report["example_decisions"]) == 3
    assert report["p99_ms"] >= report["p50_ms"] > 0
    assert report["max_catch_up_s"] > 0
    assert report["catch_up"]["longest_offline"]["catch_up_s"] is not None
    # Every planned incident happened, in order, at about its time, and did what it says.
    incidents = report["incidents"]
    assert [i["kind"] for i in incidents] == [i.kind.value for i in plan.incidents]
    for incident in incidents:
        assert incident["ok"], incident
        assert incident["started_at_s"] >= incident["planned_at_s"] - 0.5
        assert incident["ended_at_s"] >= incident["started_at_s"] + incident["planned_duration_s"] - 0.5
    cuts = [i for i in incidents if i["kind"] == IncidentKind.KAFKA_CUT.value]
    assert cuts
    assert all(cut["figures"]["failed_requests"] > 0 for cut in cuts), "devices were refused and backed off"
    # The rollout moved v3-capable devices of the cohort tenant to task v3 and nobody else.
    versions = report["rollout"]["task_versions"]
    cohort = {d.device_id for d in plan.devices if d.tenant_id == plan.rollout_tenant and 3 in d.task_versions}
    assert cohort
    assert {d for d, v in versions.items() if v == 3} == cohort
    assert all(versions[d.device_id] == 1 for d in plan.devices if d.is_legacy)


def toxiproxy_is_restored(services: Services, run_id: str) -> None:
    assert services.toxiproxy_url
    proxies = httpx.get(f"{services.toxiproxy_url}/proxies", timeout=5).json()
    kafka = {name: proxy for name, proxy in proxies.items() if name.startswith("kafka-")}
    assert kafka
    for name, proxy in kafka.items():
        assert proxy["enabled"], f"{name} left disabled"
        assert not [t for t in proxy["toxics"] if run_id in t["name"]], f"{name} keeps the run's toxics"


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def colour_count(image: Image, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    red, green, blue = colour
    count = 0
    for row in image.rows:
        for i in range(0, len(row), image.channels * 2):  # every other pixel is plenty for lines 2.5 px wide
            if (
                abs(row[i] - red) <= tolerance
                and abs(row[i + 1] - green) <= tolerance
                and abs(row[i + 2] - blue) <= tolerance
            ):
                count += 1
    return count


def assert_report_renders(tmp_path: Path, html: Path) -> None:
    assert html.exists()
    text = html.read_text()
    assert "<script" not in text, "the page runs no code"
    assert "<link" not in text, "the page loads nothing from elsewhere"
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), "no external references"
    dom = chromium(tmp_path, html, "--dump-dom").stdout
    for chart in ("plot-ops", "plot-backlog", "plot-lag", "plot-devices", "plot-hotspots", "plot-entities"):
        assert f'id="{chart}"' in dom, f"{chart} missing from the rendered DOM"
    assert dom.count("<polyline") >= 8
    assert dom.count('class="bar"') >= 1
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, html, f"--screenshot={screenshot}", "--window-size=1280,2000")
    image = read_png(screenshot)
    assert (image.width, image.height) == (1280, 2000)
    background = image.pixel(5, 5)
    painted = sum(
        1 for y in range(0, image.height, 8) for x in range(0, image.width, 8) if image.pixel(x, y) != background
    )
    assert painted > (image.width // 8) * (image.height // 8) * 0.05, "the screenshot is (nearly) blank"
    for name, colour in PLOT_COLOURS.items():
        assert colour_count(image, colour) > 150, f"no {name} drawn in the screenshot"


@pytest.mark.browser
def test_a_short_demo_through_standard_chaos_converges_and_its_report_renders(
    services: Services, tmp_path: Path
) -> None:
    report_path = tmp_path / "demo.json"
    args = ("--devices", "8", "--tenants", "2", "--duration", "30", "--seed", "11", "--chaos", "standard")
    report = run_demo(services, report_path, *args, timeout_s=420)
    assert_invariants(report, seed=11, devices=8, tenants=2, duration=30.0, chaos="standard")
    toxiproxy_is_restored(services, report["run_id"])
    assert_report_renders(tmp_path, report_path.with_suffix(".html"))


@pytest.mark.long
@pytest.mark.browser
@pytest.mark.timeout(1200)
def test_the_full_fleet_through_heavy_chaos_converges(services: Services, tmp_path: Path) -> None:
    report_path = tmp_path / "demo.json"
    args = ("--devices", "50", "--tenants", "5", "--duration", "120", "--seed", "2026", "--chaos", "heavy")
    report = run_demo(services, report_path, *args, timeout_s=900)
    assert_invariants(report, seed=2026, devices=50, tenants=5, duration=120.0, chaos="heavy")
    toxiproxy_is_restored(services, report["run_id"])
    assert_report_renders(tmp_path, report_path.with_suffix(".html"))
