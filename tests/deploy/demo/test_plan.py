"""The demo's plan: a pure function of the seed, with the fleet, edits, contention, outages and incidents asked for."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from deploy.demo.edits import render
from deploy.demo.plan import MAX_SKEW_MS, ActionKind, Chaos, IncidentKind, make_plan
from keel.errors import ValidationError
from schemas.catalog import default_catalog
from schemas.validation import validate_payload


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    first, again = make_plan(7), make_plan(7)
    assert first == again
    assert first.fingerprint() == again.fingerprint()
    assert make_plan(8).fingerprint() != first.fingerprint()
    assert make_plan(7, chaos="heavy").fingerprint() != first.fingerprint()


@pytest.mark.parametrize(("devices", "tenants"), [(50, 5), (8, 2), (13, 3)])
def test_devices_are_spread_over_the_tenants_with_legacy_builds_and_skewed_clocks(devices: int, tenants: int) -> None:
    plan = make_plan(3, devices=devices, tenants=tenants)
    assert len(plan.devices) == devices
    assert len({d.device_id for d in plan.devices}) == devices
    per_tenant = defaultdict(int)
    for device in plan.devices:
        per_tenant[device.tenant_id] += 1
        assert abs(device.clock_skew_ms) <= MAX_SKEW_MS
    assert set(per_tenant) == set(plan.tenants)
    assert max(per_tenant.values()) - min(per_tenant.values()) <= 1
    # Every tenant has a device that can take the rollout (its first one runs a current build).
    for tenant in plan.tenants:
        assert any(3 in d.task_versions for d in plan.devices if d.tenant_id == tenant)


def test_a_full_fleet_has_legacy_devices_skewed_clocks_and_mostly_current_builds() -> None:
    plan = make_plan(7)
    legacy = [d for d in plan.devices if d.is_legacy]
    skewed = [d for d in plan.devices if d.clock_skew_ms]
    assert 1 <= len(legacy) < len(plan.devices) // 2
    assert any(abs(d.clock_skew_ms) >= 60_000 for d in skewed), "skews of minutes"
    assert sum(1 for d in plan.devices if 2 in d.task_versions) > len(plan.devices) / 2


def test_every_write_renders_to_a_valid_payload_in_each_version_its_device_may_speak() -> None:
    plan = make_plan(5, devices=20, tenants=4)
    catalog = default_catalog()
    for action in plan.actions:
        if action.kind is not ActionKind.WRITE:
            continue
        device = plan.device(action.device_id)
        versions = device.task_versions if action.entity_type == "task" else (1,)
        for version in versions:
            fields = render(action.entity_type, version, action.fields_dict())
            if fields is None:
                assert action.entity_type == "task"
                assert version < 3, "only fields a newer version has can vanish"
                continue
            defaults = {f.name: f.default for f in catalog.schema(action.entity_type, version).fields}
            validate_payload(action.entity_type, version, defaults | fields, tuple(fields), catalog)


def test_legacy_devices_only_state_what_task_v1_can_say() -> None:
    plan = make_plan(9)
    for action in plan.actions:
        if action.kind is ActionKind.WRITE and action.entity_type == "task" and plan.device(action.device_id).is_legacy:
            fields = action.fields_dict()
            assert "priority" not in fields
            assert "labels" not in fields
            assert fields.get("status") != "DOING"


def test_contention_bursts_have_devices_of_one_tenant_editing_one_field_within_seconds() -> None:
    plan = make_plan(11, devices=10, tenants=2, duration_s=60)
    bursts = defaultdict(list)
    for action in plan.actions:
        if action.contended:
            field = next(iter(action.fields_dict()))
            bursts[(plan.device(action.device_id).tenant_id, action.entity_id, field)].append(action)
    assert plan.contended_writes >= 10
    concurrent = [
        group
        for group in bursts.values()
        if len({a.device_id for a in group}) >= 2 and max(a.at_s for a in group) - min(a.at_s for a in group) <= 60
    ]
    assert concurrent
    for group in concurrent:
        assert all(a.entity_id.startswith("shared-task-") for a in group)


def test_offline_windows_do_not_overlap_and_a_road_warrior_per_tenant_is_away_long() -> None:
    plan = make_plan(13, duration_s=90)
    windows = plan.offline_windows()
    for spans in windows.values():
        ordered = sorted(spans)
        for (_, end), (start, _) in itertools.pairwise(ordered):
            assert start > end
        assert all(0 <= begin < end <= plan.duration_s for begin, end in ordered)
    for tenant in plan.tenants:
        longest = max(
            (end - begin for d, spans in windows.items() for begin, end in spans if plan.device(d).tenant_id == tenant),
            default=0.0,
        )
        assert longest >= 0.35 * plan.duration_s - 0.01
    # Actions of a device alternate: never two offline (or online) in a row.
    states = defaultdict(lambda: ActionKind.ONLINE)
    for action in plan.actions:
        if action.kind in (ActionKind.OFFLINE, ActionKind.ONLINE):
            assert states[action.device_id] is not action.kind
            states[action.device_id] = action.kind


def test_actions_are_in_time_order_within_the_run() -> None:
    plan = make_plan(17, devices=12, tenants=3, duration_s=40)
    times = [a.at_s for a in plan.actions]
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < plan.duration_s


@pytest.mark.parametrize(
    ("chaos", "kinds"),
    [
        (Chaos.NONE, []),
        (
            Chaos.STANDARD,
            ["kafka-degraded", "kafka-cut", "projector-kill", "schema-rollout", "gateway-kill"],
        ),
        (
            Chaos.HEAVY,
            [
                "kafka-degraded",
                "kafka-cut",
                "projector-kill",
                "schema-rollout",
                "gateway-kill",
                "projector-kill",
                "kafka-cut",
                "gateway-kill",
            ],
        ),
    ],
)
def test_each_chaos_level_scripts_its_incidents(chaos: Chaos, kinds: list[str]) -> None:
    plan = make_plan(21, duration_s=90, chaos=chaos)
    assert [i.kind.value for i in plan.incidents] == kinds
    assert all(0 < i.at_s < plan.duration_s for i in plan.incidents)
    if chaos is Chaos.NONE:
        assert plan.rollout_tenant is None
        return
    rollout = next(i for i in plan.incidents if i.kind is IncidentKind.SCHEMA_ROLLOUT)
    assert rollout.param("tenant") == plan.rollout_tenant in plan.tenants
    assert all(i.describe() for i in plan.incidents)


def test_heavy_chaos_cuts_longer_than_standard() -> None:
    def longest_cut(chaos: str) -> float:
        plan = make_plan(1, duration_s=90, chaos=chaos)
        return max(i.duration_s for i in plan.incidents if i.kind is IncidentKind.KAFKA_CUT)

    assert longest_cut("heavy") > longest_cut("standard") >= 8.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 3, "tenants": 2}, "at least 2 devices per tenant"),
        ({"tenants": 0}, "at least 2 devices per tenant"),
        ({"duration_s": 10}, "chaos standard must last at least 20 s"),
        ({"duration_s": float("nan")}, "at least 20 s"),
        ({"duration_s": 45, "chaos": "heavy"}, "chaos heavy must last at least 60 s"),
        ({"writes_per_device_s": 0}, "writes per device"),
    ],
)
def test_sizes_it_cannot_honour_are_refused_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_plan(1, **kwargs)  # type: ignore[arg-type]


def test_more_tenants_than_names_get_numbered_names() -> None:
    plan = make_plan(1, devices=24, tenants=12)
    assert len(set(plan.tenants)) == 12
    assert plan.tenants[-1] == "tenant-12"
