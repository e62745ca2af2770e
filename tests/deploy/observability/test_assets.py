"""deploy/observability/: the alert rules pass promtool (syntax and unit tests), and the Grafana dashboard and
the rules use only metrics the running services really export (scraped from their /metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.observability.dashboard import DashboardServer
from tests.deploy.observability.world import observed_world, until
from tests.support.services import Services

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "deploy" / "observability"
RULES = ASSETS / "prometheus" / "keel-alerts.yaml"
RULE_TESTS = ASSETS / "prometheus" / "keel-alerts.test.yaml"
GRAFANA = ASSETS / "grafana" / "keel-overview.json"
DOCS = ROOT / "docs" / "observability.md"
METRIC = re.compile(r"\bkeel_[a-z0-9_]+")
# Names PromQL derives from a histogram's base name: any of them proves the histogram is exported.
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `apt-get install prometheus` (Debian) provides it (.ci/run installs it)"
    return found


def _rule_exprs() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def _grafana_exprs() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, check=False, cwd=RULE_TESTS.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_names_a_runbook_section_that_exists() -> None:
    document = yaml.safe_load(RULES.read_text())
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOCS.read_text().splitlines()
        if line.startswith("#")
    }
    alerts = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} == {
        "KeelDuplicatesRising",
        "KeelRetryRateRising",
        "KeelProjectorRetrying",
        "KeelReconciliationStalled",
        "KeelDeadLettersGrowing",
        "KeelDevicesOnDeprecatedVersion",
    }
    for rule in alerts:
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in headings, f"{rule['alert']}: docs/observability.md has no section #{anchor}"


def test_the_grafana_dashboard_is_well_formed() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "keel-overview"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]


@pytest.mark.integration
async def test_dashboards_and_alerts_use_only_metrics_the_services_export(services: Services, tmp_path: Path) -> None:
    exported: set[str] = set()
    async with observed_world(services, tmp_path) as world:
        server = DashboardServer(world.settings.model_copy(update={"dashboard_refresh_s": 0.5}))
        url = await server.start()
        try:
            async with httpx.AsyncClient(timeout=10) as client:

                async def read_once() -> bool:
                    return bool((await client.get(f"{url}/api/snapshot")).json()["history"])

                await until(read_once, "the dashboard's first reading")
                for endpoint in (f"{world.gateway_url}/metrics", f"{world.projector_url}/metrics", f"{url}/metrics"):
                    response = await client.get(endpoint)
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/plain")
                    for family in text_string_to_metric_families(response.text):
                        exported.update(sample.name for sample in family.samples)
        finally:
            await server.stop()
    exported_keel = {name for name in exported if name.startswith("keel_")}
    assert len(exported_keel) > 40
    for source, exprs in (
        ("grafana/keel-overview.json", _grafana_exprs()),
        ("prometheus/keel-alerts.yaml", _rule_exprs()),
    ):
        used = {name for expr in exprs for name in METRIC.findall(expr)}
        assert used, source
        missing = sorted(used - exported_keel)
        assert not missing, f"{source} uses metrics no service exports: {missing}"
