"""The access plan: each principal is allowed exactly its work, judged with Kafka's matching rules."""

from __future__ import annotations

import pytest

from deploy.local.acls import CLUSTER, Grant, Operation, Pattern, Principals, Resource, is_allowed, keel_access_plan
from keel.errors import ConfigurationError

ENTITIES = ["comment", "project", "task"]
P = Principals()
PLAN = keel_access_plan(prefix="kp", entities=ENTITIES, consumer_group="kp-projector", partner_entities=["task"])
R, W, D, IW = Operation.READ, Operation.WRITE, Operation.DESCRIBE, Operation.IDEMPOTENT_WRITE
TOPIC, GROUP = Resource.TOPIC, Resource.GROUP

# (principal, operation, resource, name, allowed)
MATRIX = [
    *[(P.gateway, W, TOPIC, f"kp.{e}.changes", True) for e in ENTITIES],
    (P.gateway, D, TOPIC, "kp.task.changes", True),
    (P.gateway, R, TOPIC, "kp.task.changes", False),
    (P.gateway, W, TOPIC, "kp.dlq", False),
    (P.gateway, D, TOPIC, "kp.dlq", False),
    (P.gateway, W, TOPIC, "other.task.changes", False),
    (P.gateway, R, GROUP, "kp-projector", False),
    (P.gateway, IW, Resource.CLUSTER, CLUSTER, True),
    *[(P.projector, R, TOPIC, f"kp.{e}.changes", True) for e in ENTITIES],
    (P.projector, W, TOPIC, "kp.task.changes", False),
    (P.projector, W, TOPIC, "kp.dlq", True),
    (P.projector, R, TOPIC, "kp.dlq", False),
    (P.projector, R, GROUP, "kp-projector", True),
    (P.projector, R, GROUP, "kp-projector-2", False),
    (P.operator, W, TOPIC, "kp.project.changes", True),
    (P.operator, R, TOPIC, "kp.project.changes", False),
    (P.operator, W, TOPIC, "kp.dlq", False),
    (P.partner, R, TOPIC, "kp.task.changes", True),
    (P.partner, R, TOPIC, "kp.project.changes", False),
    (P.partner, W, TOPIC, "kp.task.changes", False),
    (P.partner, R, GROUP, "partner-example.sync", True),
    (P.partner, R, GROUP, "partner-example2.sync", False),
    (P.partner, R, GROUP, "kp-projector", False),
    (P.partner, IW, Resource.CLUSTER, CLUSTER, False),
    ("someone-else", R, TOPIC, "kp.task.changes", False),
]


@pytest.mark.parametrize(("principal", "operation", "resource", "name", "allowed"), MATRIX)
def test_the_plan_allows_exactly_each_services_work(
    principal: str, operation: Operation, resource: Resource, name: str, allowed: bool
) -> None:
    assert is_allowed(PLAN.grants, principal, operation, resource, name) is allowed


def test_change_topics_are_literal_so_no_grant_reaches_the_dlq() -> None:
    writers = [g for g in PLAN.grants if g.resource is TOPIC and g.operation is W and g.principal != P.projector]
    assert writers
    assert all(g.pattern is Pattern.LITERAL for g in writers)
    assert not any(g.covers(g.principal, W, TOPIC, PLAN.dlq_topic) for g in writers)
    # What a PREFIXED grant on "<prefix>." would have done:
    trap = Grant(P.gateway, TOPIC, "kp.", Pattern.PREFIXED, W)
    assert trap.covers(P.gateway, W, TOPIC, "kp.dlq")


def test_the_plan_is_deterministic_and_scoped_to_its_prefix() -> None:
    again = keel_access_plan(
        prefix="kp", entities=ENTITIES[::-1], consumer_group="kp-projector", partner_entities=["task"]
    )
    assert again.grants == PLAN.grants
    assert PLAN.change_topics == ("kp.comment.changes", "kp.project.changes", "kp.task.changes")
    assert PLAN.in_scope(TOPIC, "kp.dlq")
    assert not PLAN.in_scope(TOPIC, "kpx.task.changes")
    assert not PLAN.in_scope(GROUP, "kp-projector")
    assert {g.principal for g in PLAN.grants} == set(P.services())
    assert P.admin not in P.services()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prefix": ""}, "topic prefix"),
        ({"prefix": "kp."}, "topic prefix"),
        ({"prefix": "k*"}, "topic prefix"),
        ({"entities": []}, "no entity types"),
        ({"partner_entities": ["invoice"]}, "unknown entity types: invoice"),
        ({"consumer_group": ""}, "consumer group"),
    ],
)
def test_bad_plans_are_refused(overrides: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "prefix": "kp",
        "entities": ENTITIES,
        "consumer_group": "g",
        "partner_entities": ["task"],
    }
    arguments.update(overrides)
    with pytest.raises(ConfigurationError, match=message):
        keel_access_plan(**arguments)  # type: ignore[arg-type]
