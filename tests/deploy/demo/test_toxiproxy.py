"""The Toxiproxy client restores exactly what the run changed, and only on the Kafka proxies."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from deploy.demo.toxiproxy import ToxiproxyControl
from keel.errors import ConfigurationError


class FakeToxiproxy:
    """Toxiproxy's HTTP API over a dict of proxies."""

    def __init__(self, proxies: dict[str, dict[str, Any]]) -> None:
        self.proxies = proxies

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "GET" and parts == ["proxies"]:
            return httpx.Response(200, json=self.proxies)
        proxy = self.proxies.get(parts[1]) if len(parts) > 1 else None
        if proxy is None:
            return httpx.Response(404, text="proxy not found")
        if request.method == "POST" and len(parts) == 2:
            proxy.update(json.loads(request.content))
            return httpx.Response(200, json=proxy)
        if request.method == "POST" and parts[2:] == ["toxics"]:
            toxic = json.loads(request.content)
            proxy["toxics"].append(toxic)
            return httpx.Response(200, json=toxic)
        if request.method == "DELETE" and parts[2] == "toxics":
            before = len(proxy["toxics"])
            proxy["toxics"] = [t for t in proxy["toxics"] if t["name"] != parts[3]]
            return httpx.Response(204) if len(proxy["toxics"]) < before else httpx.Response(404, text="no toxic")
        return httpx.Response(405)


def stack() -> FakeToxiproxy:
    def proxy(name: str, listen: str) -> dict[str, Any]:
        return {"name": name, "listen": listen, "upstream": "x", "enabled": True, "toxics": []}

    return FakeToxiproxy(
        {
            "kafka-1": proxy("kafka-1", "127.0.0.1:9095"),
            "postgres": proxy("postgres", "127.0.0.1:55433"),
        }
    )


async def test_degrade_and_cut_touch_only_kafka_proxies_and_restore_puts_everything_back() -> None:
    fake = stack()
    fake.proxies["kafka-1"]["toxics"].append({"name": "someone-elses", "type": "latency"})
    control = ToxiproxyControl("http://toxiproxy", "run-1", transport=httpx.MockTransport(fake.handle))
    try:
        assert await control.proxied_bootstrap() == "127.0.0.1:9095"
        names = await control.degrade(300, 200)
        assert names == ["kafka-1/run-1-latency-downstream", "kafka-1/run-1-latency-upstream"]
        assert await control.cut() == ["kafka-1"]
        assert fake.proxies["kafka-1"]["enabled"] is False
        assert fake.proxies["postgres"] == stack().proxies["postgres"]
    finally:
        await control.aclose()
    assert fake.proxies["kafka-1"]["enabled"] is True
    assert [t["name"] for t in fake.proxies["kafka-1"]["toxics"]] == ["someone-elses"]


async def test_restore_tolerates_toxics_already_gone() -> None:
    fake = stack()
    control = ToxiproxyControl("http://toxiproxy", "run-2", transport=httpx.MockTransport(fake.handle))
    await control.degrade(10, 5)
    fake.proxies["kafka-1"]["toxics"] = []  # `keel stack up` reset the proxy meanwhile
    await control.aclose()
    assert fake.proxies["kafka-1"]["toxics"] == []


async def test_a_stack_without_kafka_proxies_is_refused_with_the_fix() -> None:
    fake = stack()
    del fake.proxies["kafka-1"]
    control = ToxiproxyControl("http://toxiproxy", "run-3", transport=httpx.MockTransport(fake.handle))
    with pytest.raises(ConfigurationError, match="keel stack up --with-toxiproxy"):
        await control.proxied_bootstrap()
    await control.aclose()


async def test_proxies_someone_else_disabled_are_waited_for_then_refused() -> None:
    fake = stack()
    fake.proxies["kafka-1"]["enabled"] = False
    control = ToxiproxyControl("http://toxiproxy", "run-4", transport=httpx.MockTransport(fake.handle))
    with pytest.raises(ConfigurationError, match="stay disabled"):
        await control.proxied_bootstrap(wait_enabled_s=0.0)
    await control.aclose()
    assert fake.proxies["kafka-1"]["enabled"] is False, "not ours to enable"


async def test_an_incident_undone_by_someone_else_is_noticed() -> None:
    fake = stack()
    control = ToxiproxyControl("http://toxiproxy", "run-5", transport=httpx.MockTransport(fake.handle))
    await control.degrade(10, 5)
    await control.cut()
    assert await control.intact()
    fake.proxies["kafka-1"]["enabled"] = True  # another `keel stack up` reset the proxy
    assert not await control.intact()
    fake.proxies["kafka-1"]["enabled"] = False
    fake.proxies["kafka-1"]["toxics"] = []
    assert not await control.intact()
    await control.aclose()
