-- The trace context of each outbox row's change (W3C traceparent of its processing by the projector), so the
-- gateway's delivery to other devices links back to the trace that began when a device captured the change.
ALTER TABLE {schema}.outbox ADD COLUMN trace text;
