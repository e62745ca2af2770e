-- Gateway: enrolled devices. Device ids are global (the projector dedups by (device_id, device_seq)), so the
-- tenant is an attribute of the device, checked at every handshake. Secrets are stored as SHA-256 digests.
CREATE TABLE {schema}.devices (
    device_id         text        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    secret_sha256     bytea       NOT NULL,
    label             text        NOT NULL DEFAULT '',
    versions          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    enrolled_at       timestamptz NOT NULL DEFAULT now(),
    last_handshake_at timestamptz
);
CREATE INDEX devices_by_tenant ON {schema}.devices (tenant_id);
