"""Who may do what on the secure local stack's Kafka: the access plan, a checker, and its application.

One principal per service, least privilege (docs/security.md):

    keel-gateway     Write + Describe each `<prefix>.<entity>.changes`; IdempotentWrite on the cluster
    keel-projector   Read + Describe each change topic; Write + Describe `<prefix>.dlq`;
                     Read its consumer group (`KEEL_CONSUMER_GROUP`); IdempotentWrite on the cluster;
                     Write + Describe each `<prefix>.<entity>.state` (the state relay runs as this principal
                     on the local stack; Kubernetes gives it a user of its own, deploy/k8s/kafka-users.yaml)
    keel-operator    Write + Describe each change topic (`keel conflicts resolve` overrides); IdempotentWrite
    partner-example  Read + Describe the change and state topics granted to it (`KEEL_STACK_PARTNER_ENTITIES`);
                     Read groups named `partner-example.*`
    admin            super user (`super.users`): creates topics, credentials and these ACLs

Change topics are granted LITERAL, one binding per topic: a PREFIXED binding on `<prefix>.` would also
match `<prefix>.dlq`, and Kafka has no pattern that matches `*.changes` only. A new entity type therefore
needs `keel stack acls` once (the plan is derived from the catalog).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from keel.errors import ConfigurationError, ServiceUnavailableError

__all__ = [
    "CLUSTER",
    "AccessPlan",
    "Grant",
    "Operation",
    "Pattern",
    "Principals",
    "Resource",
    "apply_plan",
    "is_allowed",
    "keel_access_plan",
]

CLUSTER = "kafka-cluster"  # the one name of Kafka's cluster resource


class Resource(StrEnum):
    """Kafka resource types the plan uses."""

    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class Pattern(StrEnum):
    """How a binding's resource name matches (KIP-290)."""

    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    """Kafka ACL operations the plan uses."""

    READ = "read"
    WRITE = "write"
    DESCRIBE = "describe"
    IDEMPOTENT_WRITE = "idempotent_write"


# Kafka's authorizer lets these operations imply Describe on the same resource (AclEntry.implies).
_IMPLIES_DESCRIBE = frozenset({Operation.READ, Operation.WRITE})


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW binding: `principal` may `operation` on `resource` named `name` (matched per `pattern`)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def covers(self, principal: str, operation: Operation, resource: Resource, name: str) -> bool:
        """Whether this binding allows the request, with Kafka's implied Describe."""
        if principal != self.principal or resource != self.resource:
            return False
        if operation != self.operation and not (
            operation is Operation.DESCRIBE and self.operation in _IMPLIES_DESCRIBE
        ):
            return False
        if self.pattern is Pattern.LITERAL:
            return name == self.name
        return name.startswith(self.name)


@dataclass(frozen=True)
class Principals:
    """SCRAM user names of the stack's principals."""

    admin: str = "admin"
    gateway: str = "keel-gateway"
    projector: str = "keel-projector"
    operator: str = "keel-operator"
    partner: str = "partner-example"

    def by_role(self) -> dict[str, str]:
        """Role → user name, admin first."""
        return {
            "admin": self.admin,
            "gateway": self.gateway,
            "projector": self.projector,
            "operator": self.operator,
            "partner": self.partner,
        }

    def services(self) -> list[str]:
        """Every principal except the super user (those get credentials through the Admin API)."""
        return [name for role, name in self.by_role().items() if role != "admin"]


@dataclass(frozen=True)
class AccessPlan:
    """The grants of one topic prefix, and which topics they concern."""

    prefix: str
    change_topics: tuple[str, ...]
    dlq_topic: str
    consumer_group: str
    grants: tuple[Grant, ...] = field(default_factory=tuple)

    def for_principal(self, principal: str) -> list[Grant]:
        """The grants of one principal."""
        return [g for g in self.grants if g.principal == principal]

    def in_scope(self, resource: Resource, name: str) -> bool:
        """Whether a binding on this resource belongs to this prefix (and may be removed by a re-sync)."""
        return resource is Resource.TOPIC and name.startswith(f"{self.prefix}.")


def is_allowed(grants: Iterable[Grant], principal: str, operation: Operation, resource: Resource, name: str) -> bool:
    """Whether `grants` allow the request (no deny bindings exist in the plan; no ACL means denied)."""
    return any(g.covers(principal, operation, resource, name) for g in grants)


def _raise_if_bad_prefix(prefix: str) -> None:
    if not prefix or any(c in prefix for c in " *") or prefix.endswith("."):
        raise ConfigurationError(f"topic prefix {prefix!r}: non-empty, no spaces or '*', no trailing dot")


def keel_access_plan(
    *,
    prefix: str,
    entities: Sequence[str],
    consumer_group: str,
    partner_entities: Sequence[str],
    principals: Principals = Principals(),
) -> AccessPlan:
    """The least-privilege grants of every service principal for one topic prefix."""
    _raise_if_bad_prefix(prefix)
    if not entities:
        raise ConfigurationError("the catalog names no entity types; nothing to grant")
    unknown = sorted(set(partner_entities) - set(entities))
    if unknown:
        raise ConfigurationError(f"partner grant names unknown entity types: {', '.join(unknown)}")
    if not consumer_group:
        raise ConfigurationError("the projector's consumer group must not be empty")
    topics = tuple(f"{prefix}.{entity}.changes" for entity in entities)
    dlq = f"{prefix}.dlq"
    grants: list[Grant] = []

    def allow(principal: str, resource: Resource, name: str, pattern: Pattern, *ops: Operation) -> None:
        grants.extend(Grant(principal, resource, name, pattern, op) for op in ops)

    for topic in topics:
        allow(principals.gateway, Resource.TOPIC, topic, Pattern.LITERAL, Operation.WRITE, Operation.DESCRIBE)
        allow(principals.projector, Resource.TOPIC, topic, Pattern.LITERAL, Operation.READ, Operation.DESCRIBE)
        allow(principals.operator, Resource.TOPIC, topic, Pattern.LITERAL, Operation.WRITE, Operation.DESCRIBE)
    for entity in entities:
        state = f"{prefix}.{entity}.state"
        allow(principals.projector, Resource.TOPIC, state, Pattern.LITERAL, Operation.WRITE, Operation.DESCRIBE)
    for entity in partner_entities:
        for topic in (f"{prefix}.{entity}.changes", f"{prefix}.{entity}.state"):
            allow(principals.partner, Resource.TOPIC, topic, Pattern.LITERAL, Operation.READ, Operation.DESCRIBE)
    allow(principals.projector, Resource.TOPIC, dlq, Pattern.LITERAL, Operation.WRITE, Operation.DESCRIBE)
    allow(principals.projector, Resource.GROUP, consumer_group, Pattern.LITERAL, Operation.READ)
    # Partners name their groups `<partner>.<anything>` (docs/partners.md); the dot keeps
    # `partner-example` from matching the groups of a partner named `partner-example2`.
    allow(principals.partner, Resource.GROUP, f"{principals.partner}.", Pattern.PREFIXED, Operation.READ)
    # Idempotent producers (acks=all, KIP-98) ask for a producer id; Kafka 3+ also accepts Write on any
    # topic for that (KIP-679), the explicit grant keeps the intent visible.
    for producer in (principals.gateway, principals.projector, principals.operator):
        allow(producer, Resource.CLUSTER, CLUSTER, Pattern.LITERAL, Operation.IDEMPOTENT_WRITE)
    return AccessPlan(prefix, topics, dlq, consumer_group, tuple(sorted(set(grants))))


# ---------------------------------------------------------------------------------------- the Admin API
def _binding(grant: Grant) -> Any:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    resource_type = {
        Resource.TOPIC: ResourceType.TOPIC,
        Resource.GROUP: ResourceType.GROUP,
        Resource.CLUSTER: ResourceType.BROKER,
    }[grant.resource]
    pattern = ResourcePatternType.LITERAL if grant.pattern is Pattern.LITERAL else ResourcePatternType.PREFIXED
    operation = getattr(AclOperation, grant.operation.name)
    return AclBinding(
        resource_type, grant.name, pattern, f"User:{grant.principal}", "*", operation, AclPermissionType.ALLOW
    )


def _grant_of(binding: Any) -> Grant | None:
    """The plan's form of a binding read back from the broker; None for kinds the plan never creates."""
    from confluent_kafka.admin import AclPermissionType, ResourcePatternType, ResourceType

    resources = {ResourceType.TOPIC: Resource.TOPIC, ResourceType.GROUP: Resource.GROUP}
    resources[ResourceType.BROKER] = Resource.CLUSTER
    patterns = {ResourcePatternType.LITERAL: Pattern.LITERAL, ResourcePatternType.PREFIXED: Pattern.PREFIXED}
    if binding.permission_type != AclPermissionType.ALLOW or binding.host != "*":
        return None
    if binding.restype not in resources or binding.resource_pattern_type not in patterns:
        return None
    if not binding.principal.startswith("User:"):
        return None
    try:
        operation = Operation(binding.operation.name.lower())
    except ValueError:
        return None
    return Grant(
        binding.principal.removeprefix("User:"),
        resources[binding.restype],
        binding.name,
        patterns[binding.resource_pattern_type],
        operation,
    )


def _current(admin: Any, principals: Iterable[str], timeout_s: float) -> dict[Grant, Any]:
    """The plan-shaped ALLOW bindings the broker holds for `principals`, with the bindings themselves."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    found: dict[Grant, Any] = {}
    for principal in sorted(set(principals)):
        # None matches any resource name and any host (the stubs type both as str; the client accepts None).
        query = AclBindingFilter(
            ResourceType.ANY,
            None,  # type: ignore[arg-type]
            ResourcePatternType.ANY,
            f"User:{principal}",
            None,  # type: ignore[arg-type]
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        for binding in admin.describe_acls(query).result(timeout=timeout_s):
            grant = _grant_of(binding)
            if grant is not None:
                found[grant] = binding
    return found


def apply_plan(admin: Any, plan: AccessPlan, principals: Iterable[str], *, timeout_s: float = 30.0) -> dict[str, int]:
    """Make the broker's ACLs of `principals` under the plan's prefix equal the plan: add missing, drop stale.

    `admin` is a confluent-kafka AdminClient connected as a super user. Bindings outside the prefix (other
    prefixes sharing the principals, groups, the cluster) are only ever added, never removed. Returns once
    the broker answers with the new ACLs, so they are in force when this returns.
    """
    from confluent_kafka.admin import AclBindingFilter

    managed = set(principals)
    wanted = {g for g in plan.grants if g.principal in managed}
    existing = _current(admin, managed, timeout_s)
    missing = sorted(wanted - set(existing))
    stale = [b for g, b in existing.items() if g not in wanted and plan.in_scope(g.resource, g.name)]
    if missing:
        for future in admin.create_acls([_binding(g) for g in missing]).values():
            future.result(timeout=timeout_s)
    if stale:
        filters = [
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
            )
            for b in stale
        ]
        for future in admin.delete_acls(filters).values():
            future.result(timeout=timeout_s)
    if missing or stale:
        # The controller commits ACL changes to the metadata log; the broker applies them a moment later.
        gone = {g for g, b in existing.items() if b in stale}
        deadline = time.monotonic() + timeout_s
        while True:
            now = set(_current(admin, managed, timeout_s))
            if wanted <= now and not now & gone:
                break
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    "kafka", f"ACLs of prefix {plan.prefix!r} not in force after {timeout_s}s"
                )
            time.sleep(0.2)
    return {"created": len(missing), "deleted": len(stale)}
