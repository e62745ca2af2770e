"""Backoff, lifecycles, settings precedence and the error tree."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from keel import errors
from keel.backoff import Backoff
from keel.lifecycle import Lifecycle, LifecycleError, State
from keel.settings import Settings


def test_backoff_is_full_jitter_under_an_exponential_cap_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(2.0, 0.1 * 2**i) for i in range(12)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[6:]) > 0.2, "delays grow towards the cap"
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_lifecycle_allows_the_documented_path_and_refuses_shortcuts() -> None:
    life = Lifecycle("projector")
    for state in (State.STARTING, State.RUNNING, State.DRAINING, State.STOPPED):
        life.move_to(state)
    assert life.state is State.STOPPED
    fresh = Lifecycle("gateway")
    with pytest.raises(LifecycleError, match="cannot go from new to running"):
        fresh.move_to(State.RUNNING)


def test_settings_come_from_env_before_keel_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keel.toml").write_text('kafka_bootstrap = "from-toml:9092"\ntopic_prefix = "acme"\n')
    monkeypatch.delenv("KEEL_KAFKA_BOOTSTRAP", raising=False)
    settings = Settings()
    assert settings.kafka_bootstrap == "from-toml:9092"
    assert settings.topic_for("task") == "acme.task.changes"
    assert settings.dlq_topic == "acme.dlq"
    monkeypatch.setenv("KEEL_KAFKA_BOOTSTRAP", "from-env:9092")
    assert Settings().kafka_bootstrap == "from-env:9092"


def test_every_error_says_whether_it_is_retriable() -> None:
    transient = [
        errors.ServiceUnavailableError("kafka", "down"),
        errors.BackpressureError("slow", 1.0),
        errors.FencedError("fenced"),
    ]
    permanent = [
        errors.DecodeError("bad magic"),
        errors.UnknownSchemaError(99),
        errors.ValidationError("x"),
        errors.UpgradeRequiredError("task", [1], 2, 3),
        errors.IntegrityError("flip"),
    ]
    assert all(e.retriable for e in transient)
    assert not any(e.retriable for e in permanent)
    assert "v2" in str(permanent[3])
    documented = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in documented, f"{name} is missing from the tree drawn in keel/errors.py"


def test_the_security_environment_of_settings_reads_back_as_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    secure = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="gateway",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=ca,
    )
    environment = secure.kafka_security_environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert (child.kafka_security_protocol, child.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (child.kafka_sasl_username, child.kafka_sasl_password, child.kafka_ssl_cafile) == ("gateway", "s3cret", ca)
    for name in environment:
        monkeypatch.delenv(name)
    assert Settings(kafka_security_protocol="PLAINTEXT").kafka_security_environment() == {
        "KEEL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"
    }, "PLAINTEXT is said outright, so a child never inherits a stale protocol"
