"""Hybrid logical clock: monotonic, causality-respecting, robust to a wall clock that jumps back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keel.hlc import HlcTimestamp, HybridLogicalClock


class ManualWall:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_now_is_strictly_increasing_even_when_the_wall_clock_stalls_or_goes_back() -> None:
    wall = ManualWall(1_000)
    clock = HybridLogicalClock("a", wall)
    first = clock.now()
    second = clock.now()
    wall.now = 500  # NTP stepped the clock back
    third = clock.now()
    assert first < second < third
    assert third.physical_ms == 1_000


def test_observe_orders_later_local_events_after_the_remote_one() -> None:
    local = HybridLogicalClock("a", ManualWall(1_000))
    remote = HlcTimestamp(5_000, 7, "b")  # a peer whose clock runs ahead
    merged = local.observe(remote)
    assert merged > remote
    assert local.now() > merged


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, 50), st.integers(0, 3_000)), max_size=60)
)
def test_every_timestamp_exceeds_all_earlier_ones(steps: list[tuple[bool, int, int, int]]) -> None:
    wall = ManualWall(0)
    clock = HybridLogicalClock("n", wall)
    seen: list[HlcTimestamp] = []
    for is_receive, physical, logical, wall_now in steps:
        wall.now = wall_now
        stamp = clock.observe(HlcTimestamp(physical, logical, "r")) if is_receive else clock.now()
        assert all(stamp > earlier for earlier in seen)
        if is_receive:
            assert stamp > HlcTimestamp(physical, logical, "r")
        seen.append(stamp)


@given(st.integers(0, 10**14), st.integers(0, 10**5), st.text("abcdef0123456789-", min_size=1, max_size=20))
def test_encoding_round_trips_and_sorts_like_the_timestamp(physical: int, logical: int, node: str) -> None:
    stamp = HlcTimestamp(physical, logical, node)
    assert HlcTimestamp.decode(stamp.encode()) == stamp
    assert HlcTimestamp.from_dict(stamp.as_dict()) == stamp
    later = HlcTimestamp(physical, logical + 1, node)
    assert stamp.encode() < later.encode()
