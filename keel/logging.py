"""Structured JSON logs through structlog, shared by every service and command.

Every line carries the `trace_id` and `span_id` of the active OpenTelemetry span (when there is one), so a
log line leads to its trace and back. Services bind what they know about the work at hand — `tenant`,
`device`, `schema_version` — with `bind_context` (structlog's context variables, task-local under asyncio).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace

__all__ = ["add_trace_ids", "bind_context", "configure_logging", "get_logger"]


def add_trace_ids(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor adding `trace_id`/`span_id` of the current OpenTelemetry span, as hex."""
    del logger, method_name
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


def bind_context(**values: Any) -> None:
    """Add key/values (tenant, device, schema_version, …) to every log line of the current task from now on."""
    structlog.contextvars.bind_contextvars(**{key: value for key, value in values.items() if value is not None})


class _CurrentStderrLogger:
    """A structlog logger printing to whatever `sys.stderr` is at the time of the call.

    Binding the stream once at configuration breaks when a caller (a test runner, a CLI harness) swaps
    and closes stderr later; the next log line would raise instead of being written.
    """

    def msg(self, message: str) -> None:
        """Print one rendered line to the current stderr."""
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _current_stderr_logger(*args: Any) -> _CurrentStderrLogger:
    del args
    return _CurrentStderrLogger()


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A logging handler that always writes to the current `sys.stderr`, for the same reason."""

    @property
    def stream(self) -> Any:
        """The current stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Route structlog and the standard library's logging to stderr, as JSON lines by default."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level.upper(), handlers=[_CurrentStderrHandler()], format="%(message)s", force=True)
    # aiokafka logs every coordinator hiccup at ERROR; they are retried, so keep them at WARNING.
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    logging.getLogger("aiokafka").setLevel(quiet)
    # httpx logs every request at INFO; the services log their own requests with context.
    logging.getLogger("httpx").setLevel(quiet)
    logging.getLogger("httpx2").setLevel(quiet)  # confluent-kafka's registry client uses httpx's successor


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to a component name."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger
