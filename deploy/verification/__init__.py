"""Consistency verification shared by the demo and the chaos scenarios (issues 6 and 7).

`checker.py` is pure: it judges plain evidence (what devices believe was acknowledged, what the projection
holds, optionally the log itself and digests from every side). `replay.py` folds a decoded log into state
in one process with the projector's own merge; `evidence.py` gathers the evidence from devices,
PostgreSQL and Kafka.
"""

from deploy.verification.checker import (
    AckedOp,
    AppliedOp,
    CheckReport,
    DeviceDigest,
    DigestKey,
    Evidence,
    Finding,
    FindingKind,
    LogEntry,
    check,
    op_fingerprint,
)

__all__ = [
    "AckedOp",
    "AppliedOp",
    "CheckReport",
    "DeviceDigest",
    "DigestKey",
    "Evidence",
    "Finding",
    "FindingKind",
    "LogEntry",
    "check",
    "op_fingerprint",
]
