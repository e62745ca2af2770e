"""The probes' pure parts: lag from end, start and the consumer's positions; rates over the history."""

from __future__ import annotations

from deploy.observability.fleet import HistoryPoint, KafkaView, PartitionLag, PgView, Snapshot, StoredOffset, lag_of


def test_lag_counts_from_the_furthest_known_position_and_never_before_the_log_start() -> None:
    ends = {("t", 0): 100, ("t", 1): 50, ("t", 2): 10, ("t", 3): 40}
    starts = {("t", 0): 0, ("t", 1): 0, ("t", 2): 0, ("t", 3): 30}
    committed = {("t", 0): 90, ("t", 1): 20}
    stored = [StoredOffset("t", 1, 45, 1.0), StoredOffset("t", 0, 80, 1.0)]  # PostgreSQL ahead on partition 1
    lags = {(p.topic, p.partition): p for p in lag_of(ends, starts, committed, stored)}
    assert lags[("t", 0)] == PartitionLag("t", 0, 100, 0, 90, 10)
    assert lags[("t", 1)] == PartitionLag("t", 1, 50, 0, 45, 5)
    assert lags[("t", 2)] == PartitionLag("t", 2, 10, 0, None, 10)  # never committed: everything waits
    assert lags[("t", 3)].lag == 10  # records before the log start are gone, not waiting


def test_rates_come_from_the_history_and_the_json_carries_the_totals() -> None:
    view = KafkaView(partitions=[PartitionLag("t", 0, 300, 0, 280, 20)])
    history = [HistoryPoint(1_000, 40, 100, 60, 0), HistoryPoint(11_000, 20, 300, 280, 1)]
    snapshot = Snapshot(11_000, "k", "s", "g", view, PgView(), history)
    assert snapshot.rates() == {"produced_per_s": 20.0, "projected_per_s": 22.0}
    body = snapshot.to_json()
    assert body["kafka"]["total_lag"] == 20
    assert body["rates"]["projected_per_s"] == 22.0
    assert Snapshot(0, "k", "s", "g", KafkaView(), PgView()).rates() == {"produced_per_s": 0.0, "projected_per_s": 0.0}
