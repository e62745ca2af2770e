"""`keel stack` end to end: status --json of a running stack; up is idempotent; down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.services import Services

pytestmark = pytest.mark.integration


KEEL = str(Path(sys.executable).with_name("keel"))


def _keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEEL, *args], capture_output=True, text=True, check=False, timeout=600, env={**os.environ, **(env or {})}
    )


def test_status_json_reports_every_service_healthy(services: Services) -> None:
    if services.source != "local-stack":
        pytest.skip("status reports the local stack; this run uses services from " + services.source)
    result = _keel("stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    for name in ("kafka", "registry", "postgres", "toxiproxy"):
        entry = status[name]
        assert set(entry) >= {"name", "healthy", "endpoint", "pid", "log"}
        assert entry["healthy"] is True, name
        assert psutil.pid_exists(entry["pid"]), name
    assert status["kafka"]["endpoint"] == services.kafka_bootstrap
    assert status["kafka"]["secure"] is services.secure, "the mode the tests run in is the one the stack reports"


def test_second_up_is_a_no_op(services: Services) -> None:
    if services.source != "local-stack":
        pytest.skip("only the local stack is started by `keel stack up`; this run uses " + services.source)
    before = json.loads(_keel("stack", "status", "--json").stdout)
    result = _keel("stack", "up", "--with-toxiproxy", *(["--secure"] if services.secure else []))
    assert result.returncode == 0, result.stderr
    after = json.loads(_keel("stack", "status", "--json").stdout)
    assert {k: v["pid"] for k, v in before.items()} == {k: v["pid"] for k, v in after.items()}


def test_down_stops_every_process_it_started(tmp_path: Path) -> None:
    """A second, private stack on other ports: up → healthy → down → none of its processes remain."""
    env = {
        "KEEL_HOME": str(tmp_path / "stack"),
        "KEEL_KAFKA_PORT": "9192",
        "KEEL_REGISTRY_PORT": "8181",
        "KEEL_REGISTRY_MANAGEMENT_PORT": "9101",
        "KEEL_POSTGRES_PORT": "55532",
        "KEEL_TOXIPROXY_PORT": "8574",
    }
    try:
        up = _keel("stack", "up", "--with-toxiproxy", env=env)
        assert up.returncode == 0, up.stderr
        status = json.loads(_keel("stack", "status", "--json", env=env).stdout)
        pids = {name: entry["pid"] for name, entry in status.items()}
        assert all(entry["healthy"] for entry in status.values()), status
        assert set(pids) == {"kafka", "registry", "postgres", "toxiproxy"}
        assert status["kafka"]["endpoint"] == "127.0.0.1:9192"
        procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    finally:
        down = _keel("stack", "down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    for name, proc in procs.items():
        gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        assert gone, f"{name} (pid {proc.pid}) still runs after down"
    assert not (tmp_path / "stack").exists(), "--purge removes the runtime folder"
