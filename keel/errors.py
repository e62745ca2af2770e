"""The error tree of Keel; every error says whether retrying can help.

::

    KeelError                         retriable=False unless stated
    ├── ConfigurationError            settings or files are unusable; fix them and restart
    │   └── WrongKeyError             the key or passphrase does not open an encrypted store
    ├── TransientError                retriable=True: wait, back off, try again
    │   ├── ServiceUnavailableError   Kafka, the registry or PostgreSQL cannot be reached
    │   ├── BackpressureError         a rate or buffer limit was hit; honour `retry_after_s`
    │   ├── RequestTimeoutError       a client sent its request too slowly; send it again
    │   └── FencedError               a newer consumer owns the partition; drop the batch, rejoin
    └── PermanentError                the input itself is wrong; retrying the same input fails again
        ├── ContractError             an event breaks the event contract
        │   ├── DecodeError           bytes are not Confluent-framed Avro we can read
        │   ├── UnknownSchemaError    the writer schema id is unknown to the registry
        │   └── ValidationError       a decoded payload fails validation (types, required, ranges)
        ├── IncompatibleSchemaError   a schema change breaks the subject's compatibility level
        ├── UpgradeRequiredError      a client speaks only versions below the server's minimum
        ├── SequenceError             a device's seq has a gap or an inversion
        ├── IntegrityError            a signature, hash chain or manifest does not verify
        ├── PayloadTooLargeError      a request body exceeds the receiver's limit; split it or drop it
        └── AuthError                 missing, expired or foreign credentials
            └── ForbiddenError        valid credentials, but for another device or tenant

Consumers route `PermanentError` to the dead-letter topic and pause on `TransientError`;
nothing transient ever reaches the DLQ.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BackpressureError",
    "ConfigurationError",
    "ContractError",
    "DecodeError",
    "FencedError",
    "ForbiddenError",
    "IncompatibleSchemaError",
    "IntegrityError",
    "KeelError",
    "PayloadTooLargeError",
    "PermanentError",
    "RequestTimeoutError",
    "SequenceError",
    "ServiceUnavailableError",
    "TransientError",
    "UnknownSchemaError",
    "UpgradeRequiredError",
    "ValidationError",
    "WrongKeyError",
]


class KeelError(Exception):
    """Root of every error Keel raises on purpose."""

    retriable: bool = False


class ConfigurationError(KeelError):
    """Settings, files or command-line input are unusable."""


class WrongKeyError(ConfigurationError):
    """The key or passphrase given does not open an encrypted store (retrying with the same one cannot help)."""


class TransientError(KeelError):
    """A condition that passes with time; callers back off and retry."""

    retriable = True


class ServiceUnavailableError(TransientError):
    """Kafka, the schema registry or PostgreSQL cannot be reached right now."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} unavailable: {detail}")
        self.service = service
        self.detail = detail


class BackpressureError(TransientError):
    """A rate or buffer limit was reached; retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(TransientError):
    """A client took longer than the receiver allows to send its request (HTTP 408); send it again."""


class FencedError(TransientError):
    """A newer consumer committed past us: this instance's batch must be discarded."""


class PermanentError(KeelError):
    """The input is wrong in itself; the same input will fail the same way again."""


class ContractError(PermanentError):
    """An event breaks the event contract described in docs/contract.md."""

    schema_id: int | None = None


class DecodeError(ContractError):
    """Bytes that are not Confluent wire format Avro this reader can decode."""

    def __init__(self, message: str, schema_id: int | None = None) -> None:
        super().__init__(message)
        self.schema_id = schema_id


class UnknownSchemaError(ContractError):
    """The writer schema id in the frame is unknown to the registry."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not known to the schema registry")
        self.schema_id = schema_id


class ValidationError(ContractError):
    """A payload fails validation: wrong type, missing required field or out-of-range value."""

    def __init__(self, message: str, field: str | None = None, schema_id: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.schema_id = schema_id


class IncompatibleSchemaError(PermanentError):
    """A schema change breaks the compatibility level of its subject."""


class UpgradeRequiredError(PermanentError):
    """A client supports only versions below the server's minimum for some entity."""

    def __init__(self, entity: str, client_versions: list[int], minimum: int, newest: int) -> None:
        super().__init__(
            f"upgrade required for {entity}: client speaks versions {client_versions}, "
            f"server requires at least v{minimum} (newest is v{newest})"
        )
        self.entity = entity
        self.client_versions = client_versions
        self.minimum = minimum
        self.newest = newest


class SequenceError(PermanentError):
    """A device sequence number has a gap, an inversion or a replay with different content."""


class IntegrityError(PermanentError):
    """A signature, hash chain, digest or manifest does not verify."""


class AuthError(PermanentError):
    """Credentials are missing, expired, malformed or belong to someone else."""


class ForbiddenError(AuthError):
    """The credentials are valid but do not allow this: another device's outbox, another tenant's data."""


class PayloadTooLargeError(PermanentError):
    """A request body exceeds the receiver's limit (`limit_bytes`); send less per request."""

    def __init__(self, message: str, limit_bytes: int = 0) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes
