"""What a bench ran on: cores, memory, CPU model, load, and the versions of everything in the data path."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
from pathlib import Path
from typing import Any

import asyncpg
import confluent_kafka
import httpx
import psutil

from keel.settings import Settings

__all__ = ["describe_machine", "describe_versions"]

LIBRARIES = (
    "aiokafka",
    "asyncpg",
    "confluent-kafka",
    "fastavro",
    "pydantic",
    "starlette",
    "uvicorn",
    "httpx",
    "opentelemetry-sdk",
    "uvloop",
    "structlog",
)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """Cores, memory, CPU model, OS and the load when the run started (other people's work included)."""
    load = os.getloadavg()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_1_5_15": [round(value, 2) for value in load],
    }


def _kafka_version(settings: Settings) -> str:
    """The broker's version from its running process (the local stack's), else the configured one."""
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or ())
        if process.info.get("name") == "java" and "kafka.Kafka" in cmdline:
            found = re.search(r"kafka[_-](?:\d+\.\d+-)?(\d+\.\d+\.\d+)", cmdline)
            if found:
                return found.group(1)
    return f"{settings.kafka_version} (configured)"


async def _postgres_version(settings: Settings) -> str:
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        connection = await asyncpg.connect(settings.database_url)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()
    return "unknown"


async def _registry_version(settings: Settings) -> str:
    base = settings.registry_url.split("/apis/", 1)[0]
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        async with httpx.AsyncClient(timeout=5.0) as client:
            info = (await client.get(f"{base}/apis/registry/v3/system/info")).json()
            return f"{info.get('name', 'registry')} {info['version']}"
    return "unknown"


async def describe_versions(settings: Settings) -> dict[str, str]:
    """Python, Kafka, PostgreSQL, the registry and the libraries on the hot paths."""
    versions = {
        "python": platform.python_version(),
        "kafka": _kafka_version(settings),
        "postgresql": await _postgres_version(settings),
        "registry": await _registry_version(settings),
        "librdkafka": confluent_kafka.libversion()[0],
    }
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
