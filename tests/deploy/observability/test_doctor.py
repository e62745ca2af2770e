"""`keel doctor` on the real services (names of each test alone): passes a healthy deployment, names a stopped
projector and a growing dead-letter topic as problems, says what to do, and exits non-zero for them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumers.projector import Projector
from deploy.observability.doctor import DoctorReport, Severity, run_doctor
from keel.event_log import OutgoingRecord
from keel.kafka_adapter import AioKafkaLogWriter
from keel.settings import Settings
from producers.device import Device
from producers.gateway.service import GatewayServer
from projections.pg_adapter import connect_pool
from projections.sql_migrations import quote_ident
from tests.deploy.observability.world import until
from tests.producers.live import ENROLL_SECRET, LIVE, VERSIONS, live_settings
from tests.support.services import Services

pytestmark = pytest.mark.integration


@dataclass
class Deployment:
    """A gateway and a projector of one test, and a device writing through them."""

    settings: Settings
    gateway: GatewayServer
    projector: Projector
    device: Device
    stop: asyncio.Event
    projector_task: asyncio.Task[None]

    async def stop_projector(self) -> None:
        """Drain the projector and wait until it stopped (its health endpoint closes with it)."""
        self.stop.set()
        await asyncio.wait_for(self.projector_task, 60)

    @property
    def urls(self) -> Settings:
        """Settings that also name the gateway and the projector's health endpoint."""
        return self.settings.model_copy(
            update={
                "gateway_url": self.gateway.url,
                "projector_url": f"http://127.0.0.1:{self.projector.health.port}",
            }
        )

    async def applied(self) -> int:
        """Rows in applied_ops."""
        async with asyncio.timeout(10):
            pool = await connect_pool(self.settings.database_url, max_size=1)
            try:
                sql = f"SELECT count(*) FROM {quote_ident(self.settings.pg_schema)}.applied_ops"
                return int(await pool.fetchval(sql))
            finally:
                await pool.close()


@asynccontextmanager
async def deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    """Gateway, projector and one device that wrote three tasks, all projected."""
    settings = live_settings(services)
    gateway = GatewayServer(settings)
    projector = Projector(settings, health_port=0, lag_sample_s=0.5)
    stop = asyncio.Event()
    await gateway.start()
    task = asyncio.create_task(projector.run(stop), name="doctor-projector")
    device: Device | None = None
    try:
        await asyncio.wait_for(projector.ready_event.wait(), 60)
        device = await Device.enroll(
            tmp_path / "device.db",
            gateway.url,
            tenant_id="acme",
            enrollment_secret=ENROLL_SECRET,
            versions=VERSIONS,
            config=LIVE,
        )
        for index in range(3):
            device.upsert("task", f"t-{index}", {"title": f"task {index}"})
        await device.sync()
        deployed = Deployment(settings, gateway, projector, device, stop, task)

        async def projected() -> bool:
            return await deployed.applied() == 3

        await until(projected, "three ops projected")
        yield deployed
    finally:
        if device is not None:
            await device.close()
        stop.set()
        await asyncio.wait_for(task, 60)
        await gateway.stop()


def _findings(report: DoctorReport, check: str) -> list[tuple[Severity, str, str]]:
    return [(f.severity, f.summary, f.advice) for f in report.findings if f.check == check]


async def test_a_healthy_deployment_passes(services: Services, tmp_path: Path) -> None:
    async with deployment(services, tmp_path) as deployed:
        report = await run_doctor(deployed.urls, sample_s=1.0)
    assert report.problems == [], report.problems
    assert [f for f in report.findings if f.severity is not Severity.OK] == []
    assert report.exit_code == 0
    checks = {f.check: f.severity for f in report.findings}
    for check in ("postgresql", "migrations", "kafka", "registry", "subjects", "gateway", "projector", "lag", "dlq"):
        assert checks.get(check) is Severity.OK, (check, report.findings)
    assert any(
        "Apicurio" in f.summary or "Schema Registry" in f.summary for f in report.findings if f.check == "registry"
    )
    assert any(f.summary.startswith("PostgreSQL 1") for f in report.findings if f.check == "postgresql")


async def test_a_stopped_projector_is_named_as_a_problem(services: Services, tmp_path: Path) -> None:
    async with deployment(services, tmp_path) as deployed:
        await deployed.stop_projector()
        for index in range(3, 8):
            deployed.device.upsert("task", f"t-{index}", {"title": f"written while the projector is down {index}"})
        await deployed.device.sync()  # the gateway still accepts: the log grows, nothing projects it
        report = await run_doctor(deployed.urls, sample_s=1.0)
    assert report.exit_code == 1
    ((severity, summary, advice),) = _findings(report, "projector")
    assert severity is Severity.PROBLEM
    assert "down" in summary
    assert "keel run projector" in advice
    ((severity, summary, advice),) = _findings(report, "lag")
    assert severity is Severity.PROBLEM
    assert "STOPPED" in summary
    assert "5 records wait" in summary
    assert "keel run projector" in advice


async def test_a_growing_dead_letter_topic_is_named_as_a_problem(services: Services, tmp_path: Path) -> None:
    async with deployment(services, tmp_path) as deployed:
        writer = AioKafkaLogWriter(deployed.settings)
        await writer.start()
        try:
            bad = OutgoingRecord(
                deployed.settings.topic_for("task"), b"bad", b"\x00\x00\x00\x00\x07 not a framed event"
            )
            await writer.write([bad, bad])
        finally:
            await writer.stop()

        async def dead_lettered() -> bool:
            runtime = deployed.projector.supervisor.runtime if deployed.projector.supervisor else None
            return runtime is not None and runtime.stats.dead_lettered == 2

        await until(dead_lettered, "two dead letters")
        report = await run_doctor(deployed.urls, sample_s=1.0)
    assert report.exit_code == 1
    ((severity, summary, advice),) = _findings(report, "dlq")
    assert severity is Severity.PROBLEM
    assert "GROWING" in summary
    assert "2 new" in summary
    assert "2 in all" in summary
    assert "fix the producer" in advice
    assert [f.check for f in report.problems] == ["dlq"], report.problems


def test_the_command_exits_non_zero_and_prints_what_to_do(tmp_path: Path) -> None:
    # A deployment that cannot be reached at all: every dependency is a problem, each with advice.
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(
        KEEL_DATABASE_URL="postgresql://keel:secret@127.0.0.1:1/keel",
        KEEL_KAFKA_BOOTSTRAP="127.0.0.1:1",
        KEEL_REGISTRY_URL="http://127.0.0.1:1/apis/ccompat/v7",
        KEEL_LOG_LEVEL="ERROR",
        COLUMNS="200",
    )
    keel = str(Path(sys.executable).with_name("keel"))
    result = subprocess.run(
        [keel, "doctor", "--json", "--sample-s", "0"],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    import json

    body = json.loads(result.stdout)
    problems = {f["check"]: f for f in body["findings"] if f["severity"] == "problem"}
    assert set(problems) == {"postgresql", "kafka", "registry"}
    assert "secret" not in result.stdout  # the password is redacted
    assert all(f["advice"] for f in problems.values())
