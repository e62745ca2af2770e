"""The dead-letter topic: records that can never be projected, with headers saying where and why.

A dead letter keeps the original key, value and headers, plus `keel-dlq-*` headers naming the source
topic, partition and offset, the error class and message and the writer schema id (empty if unknown).
The runtime writes dead letters (acks=all) before it commits the offset that skips them, so a record is
never lost; after a crash in between it may be dead-lettered twice (the DLQ is at-least-once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keel.errors import KeelError
from keel.event_log import LogRecord, LogWriter, OutgoingRecord

__all__ = [
    "ERROR_CLASS",
    "ERROR_MESSAGE",
    "SCHEMA_ID",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TOPIC",
    "DeadLetter",
    "DeadLetterQueue",
    "dead_letter_record",
]

SOURCE_TOPIC = "keel-dlq-source-topic"
SOURCE_PARTITION = "keel-dlq-source-partition"
SOURCE_OFFSET = "keel-dlq-source-offset"
ERROR_CLASS = "keel-dlq-error-class"
ERROR_MESSAGE = "keel-dlq-error-message"
SCHEMA_ID = "keel-dlq-schema-id"
_DLQ_HEADERS = {SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, ERROR_CLASS, ERROR_MESSAGE, SCHEMA_ID}
MAX_MESSAGE_BYTES = 2_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record and the permanent error that keeps it out of the projections."""

    record: LogRecord
    error: KeelError
    schema_id: int | None = None


def dead_letter_record(topic: str, letter: DeadLetter) -> OutgoingRecord:
    """The DLQ record of a dead letter."""
    source = letter.record
    message = str(letter.error).encode()[:MAX_MESSAGE_BYTES]
    headers = [(key, value) for key, value in source.headers if key not in _DLQ_HEADERS]
    headers += [
        (SOURCE_TOPIC, source.topic.encode()),
        (SOURCE_PARTITION, str(source.partition).encode()),
        (SOURCE_OFFSET, str(source.offset).encode()),
        (ERROR_CLASS, type(letter.error).__name__.encode()),
        (ERROR_MESSAGE, message),
        (SCHEMA_ID, b"" if letter.schema_id is None else str(letter.schema_id).encode()),
    ]
    return OutgoingRecord(topic, source.key, source.value, tuple(headers))


class DeadLetterQueue:
    """Writes dead letters through a `LogWriter` (acks=all: returns only once they are durable)."""

    def __init__(self, writer: LogWriter, topic: str) -> None:
        self._writer = writer
        self.topic = topic
        self.sent = 0

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Write every letter; ServiceUnavailableError if the log does not acknowledge them."""
        if not letters:
            return
        await self._writer.write([dead_letter_record(self.topic, letter) for letter in letters])
        self.sent += len(letters)
