"""Log lines are JSON and carry the active span's trace and span ids plus what the task bound."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import structlog

from keel.logging import bind_context, configure_logging, get_logger
from keel.telemetry import configure_telemetry, get_tracer


def test_a_line_logged_in_a_span_names_the_trace_and_what_was_bound(capsys: pytest.CaptureFixture[str]) -> None:
    configure_telemetry("test")
    saved, handlers, level = structlog.get_config(), logging.root.handlers[:], logging.root.level
    configure_logging("INFO", json=True)  # writes to this test's captured stderr: restored below
    structlog.contextvars.clear_contextvars()
    try:
        bind_context(tenant="acme", device="d-1", schema_version=None)  # None values are left out
        with get_tracer("test").start_as_current_span("work") as span:
            get_logger("test").info("inside")
        get_logger("test").info("outside")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.configure(**saved)
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-2:])
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert (inside["tenant"], inside["device"], inside["event"]) == ("acme", "d-1", "inside")
    assert "schema_version" not in inside
    assert "trace_id" not in outside
    assert outside["device"] == "d-1"


def test_logging_after_the_stderr_it_started_with_was_closed_writes_to_the_current_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    swapped = (tmp_path / "swapped.log").open("w", encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", swapped)
    configure_logging("INFO")
    swapped.close()  # what a CLI runner does with the stream it lent
    current = (tmp_path / "current.log").open("w", encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", current)
    get_logger("test").info("still logging")
    logging.getLogger("stdlib").warning("the standard library too")
    current.close()
    lines = (tmp_path / "current.log").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["event"] == "still logging"
    assert lines[1] == "the standard library too"
