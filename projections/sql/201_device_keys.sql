-- Security: each device's Ed25519 public keys (docs/security.md, "Tamper evidence"). A key signs the
-- device's ops from `from_seq` on, until a key with a higher from_seq takes over (rotation). Written by the
-- gateway at enrolment and rotation, read by the gateway, the projector and `keel audit verify`.
CREATE TABLE {schema}.device_keys (
    device_id     text        NOT NULL,
    from_seq      bigint      NOT NULL CHECK (from_seq >= 1),
    tenant_id     text        NOT NULL,
    public_key    bytea       NOT NULL CHECK (length(public_key) = 32),
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, from_seq)
);
