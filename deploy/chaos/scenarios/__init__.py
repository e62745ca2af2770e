"""The scenarios of the resilience battery; importing this package registers them (R1 … R9, drill)."""

from deploy.chaos.scenarios import (
    broker_faults,
    clock_skew,
    consumer_churn,
    device_network,
    gateway_kills,
    malformed_records,
    postgres_faults,
    projector_kills,
    restore_drill,
    stateful_model,
)

__all__ = [
    "broker_faults",
    "clock_skew",
    "consumer_churn",
    "device_network",
    "gateway_kills",
    "malformed_records",
    "postgres_faults",
    "projector_kills",
    "restore_drill",
    "stateful_model",
]
