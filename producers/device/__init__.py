"""The device SDK: a durable local replica with an op-log, and an offline-first sync loop (docs/device-sdk.md)."""

from producers.device.device import Device, DeviceStatus
from producers.device.sync_loop import SyncConfig, SyncState

__all__ = ["Device", "DeviceStatus", "SyncConfig", "SyncState"]
