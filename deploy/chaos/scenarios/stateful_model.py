"""R9 — a hypothesis state machine of device queues, gateway, log and projector on the in-memory fakes.

Hypothesis (`RuleBasedStateMachine`) draws programs of steps over `deploy/chaos/model.py`'s world: devices
write and delete, push with a fault (the answer lost after the gateway committed, the gateway failing
after the broker's ack or after its ledger commit, the log down), records get appended twice, the
projector applies a few records per partition or crashes before committing, devices restart from their
store and pull. After **every** step the invariants hold: no acknowledged op missing from the log or
replaced, no op applied twice, no seq inversion, nothing below a stored offset left unapplied. Whenever the
program drains (and at its end), every device must have emptied its queue, every acknowledged op must be
applied, and device digests = projection digests = a clean replay of the log. A violation fails the run
with hypothesis's shrunk program.

Needs the `dev` extras (hypothesis). It runs in a worker thread: each example owns an event loop.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Coroutine
from typing import Any, TypeVar

from deploy.chaos.context import ChaosRun
from deploy.chaos.model import ENROLLMENT_SECRET, ModelStats, ModelWorld, written
from deploy.chaos.scenario import ScenarioOutcome, register
from keel.errors import ConfigurationError
from keel.settings import Settings

__all__ = ["stateful_model"]

T = TypeVar("T")
DEVICES = 3
ENTITIES = ("task-a", "task-b", "task-c", "task-d")
PUSH_FAULTS = ("none", "answer-lost", "before-produce", "after-produce", "after-commit", "log-down")
DRAIN_EVERY = 12  # steps between two drains at least: faults pile up in between


def _model_settings() -> Settings:
    return Settings(
        topic_prefix="model",
        gateway_enrollment_secret=ENROLLMENT_SECRET,
        gateway_outbox_poll_s=0.02,
        gateway_stream_heartbeat_s=0.5,
        log_json=False,
    )


def _machine(stats: ModelStats, failures: list[str]) -> type[Any]:
    """The state machine class (hypothesis imported here: it is a dev dependency)."""
    try:
        from hypothesis import strategies as st
        from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
    except ImportError as error:  # pragma: no cover - the dev extras are installed wherever tests run
        raise ConfigurationError("R9 needs hypothesis: pip install -e '.[dev]'") from error

    devices = st.integers(0, DEVICES - 1)

    class KeelModel(RuleBasedStateMachine):
        """Device queues, gateway, log and projector on fakes; see the module docstring."""

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.world = ModelWorld(_model_settings(), stats)
            self.steps_since_drain = 0
            stats.examples += 1

        def _run(self, work: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(work)

        @initialize()
        def enroll(self) -> None:
            """Start the gateway and enroll the devices."""
            self._run(self.world.start(DEVICES))

        @rule(device=devices, entity=st.sampled_from(ENTITIES), title=st.integers(0, 9), delete=st.booleans())
        def write(self, device: int, entity: str, title: int, delete: bool) -> None:
            """A local write (durable at once, queued for the gateway)."""
            target = self.world.devices[device]
            if delete and target.get("task", entity) is not None:
                target.delete("task", entity)
            else:
                target.upsert("task", entity, {"title": f"title {title}", "priority": title % 4})
            stats.ops_written += 1

        @rule(device=devices, count=st.integers(2, 8), first=st.integers(0, 99))
        def write_burst(self, device: int, count: int, first: int) -> None:
            """Several local writes in a row (an offline session)."""
            target = self.world.devices[device]
            for n in range(first, first + count):
                target.upsert(
                    "task", ENTITIES[n % len(ENTITIES)], {"title": f"burst {n}", "status": "DONE" if n % 2 else "DOING"}
                )
            stats.ops_written += count

        @rule(device=devices, fault=st.sampled_from(PUSH_FAULTS))
        def push(self, device: int, fault: str) -> None:
            """A push, with a fault."""
            self._run(self.world.push(device, fault))

        @rule(pick=st.integers(0, 10_000))
        def redeliver(self, pick: int) -> None:
            """A record appended twice."""
            self.world.redeliver(pick)

        @rule(max_records=st.integers(1, 6), crash=st.booleans())
        def project(self, max_records: int, crash: bool) -> None:
            """A projector pass (or a crash before its commit)."""
            self._run(self.world.project(max_records, crash_before_commit=crash))

        @rule(device=devices)
        def pull(self, device: int) -> None:
            """A device pulls the feed (its queue stays as it is)."""
            self._run(self.world.pull_only(device))

        @rule(device=devices)
        def restart_device(self, device: int) -> None:
            """A device's app restarts."""
            self._run(self.world.restart_device(device))

        @precondition(lambda self: self.steps_since_drain >= DRAIN_EVERY)
        @rule()
        def drain_and_converge(self) -> None:
            """Everything pushed, projected and pulled: all applied, every digest equal."""
            self._converge()

        def _converge(self) -> None:
            self.steps_since_drain = 0
            stuck = self._run(self.world.drain())
            assert not stuck, f"devices that could not empty their queue: {stuck}"
            report = self._run(self.world.report(drained=True))
            if not report.ok:
                failures.append("\n".join(report.summary()))
            assert report.ok, "\n".join(report.summary())

        @invariant()
        def nothing_acknowledged_lost_nothing_applied_twice(self) -> None:
            """After every step."""
            stats.steps += 1
            self.steps_since_drain += 1
            if not self.world.devices:
                return
            problems = self._run(self.world.violations())
            if problems:
                failures.append("; ".join(problems[:5]))
            assert not problems, "; ".join(problems[:5])

        def teardown(self) -> None:
            """Converge one last time, then close the world."""
            try:
                if self.world.devices:
                    self._converge()
                    records, copies = self.world.count_log()
                    stats.log_records += records
                    stats.redeliveries += copies
                    stats.ops_held += written(self.world.devices)
            finally:
                self._run(self.world.close())
                self.loop.close()

    return KeelModel


def _explore(seed: int, examples: int, steps: int, stats: ModelStats, failures: list[str]) -> str | None:
    """Run the machine (in a worker thread); the falsifying program's text when an invariant broke."""
    from hypothesis import HealthCheck
    from hypothesis import seed as with_seed
    from hypothesis import settings as hypothesis_settings
    from hypothesis.stateful import run_state_machine_as_test

    machine = with_seed(seed)(_machine(stats, failures))
    chosen = hypothesis_settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    try:
        run_state_machine_as_test(machine, settings=chosen)
    except AssertionError:
        return traceback.format_exc(limit=3)[-6_000:]
    return None


@register(
    "R9",
    "Stateful model on the in-memory fakes",
    "after every step of hypothesis-drawn programs (writes, pushes with lost answers and gateway failures, "
    "log outages, duplicate records, projector crashes, device restarts): no acknowledged op lost, none "
    "applied twice; whenever drained: every device's digest = the projection's = a clean replay",
    quick="100 programs of up to 40 steps",
    full="2,000 programs of up to 80 steps",
)
async def stateful_model(run: ChaosRun) -> ScenarioOutcome:
    """Run R9 (module docstring)."""
    stats = ModelStats()
    failures: list[str] = []
    examples, steps = int(run.pick(100, 2_000)), int(run.pick(40, 80))
    falsified = await asyncio.to_thread(_explore, run.seed, examples, steps, stats, failures)
    outcome = ScenarioOutcome(events=stats.ops_written)
    outcome.check(
        "the invariants held after every step of every program",
        falsified is None,
        f"{stats.examples} programs, {stats.steps} steps" if falsified is None else falsified[-1_500:],
    )
    outcome.check("every program converged when drained", falsified is None, f"{stats.drains} drains")
    outcome.check(
        "every fault was exercised",
        all(
            stats.faults.get(k, 0) > 0
            for k in (
                "answer-lost",
                "after-produce",
                "after-commit",
                "log-down",
                "redelivery",
                "projector-crash",
                "device-restart",
            )
        ),
        ", ".join(f"{k} {v}" for k, v in sorted(stats.faults.items())),
    )
    if failures:
        text = failures[-1]
        outcome.lost = text.count("lost:") + text.count("altered:")
        outcome.duplicated = text.count("duplicated:")
        outcome.diverged = "diverged" in text and "diverged 0" not in text
    outcome.figures.update(
        {
            "examples": stats.examples,
            "steps": stats.steps,
            "pushes": stats.pushes,
            "drains": stats.drains,
            "faults": dict(sorted(stats.faults.items())),
            "ops_at_end_of_programs": stats.ops_held,
            "log_records": stats.log_records,
            "redeliveries_in_log": stats.redeliveries,
        }
    )
    if falsified is not None:
        outcome.figures["falsifying_program"] = falsified
    return outcome
