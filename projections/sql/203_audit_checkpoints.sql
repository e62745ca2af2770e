-- Security: signed checkpoints (docs/security.md, "Checkpoints and keel audit verify"). Each row vouches,
-- under the checkpoint key, for one tenant's chain heads and projection digests at the consumer offsets
-- read in the same snapshot; `keel audit verify` replays the log to those offsets and compares.
CREATE TABLE {schema}.audit_checkpoints (
    checkpoint_id bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    key_id        text        NOT NULL,
    body          jsonb       NOT NULL,
    signature     bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_checkpoints_by_tenant ON {schema}.audit_checkpoints (tenant_id, checkpoint_id);
