-- Security: the hash chains of signed devices as the projector verified them, written in the same
-- transaction as the batch. chain_links holds one row per consumed seq of a device: an op in the log
-- ('op'), a seq the gateway refused with a signed link ('skipped'), or one it refused without one ('gap').
-- chain_heads is each device's highest seq up to which every seq is linked to its predecessor.
CREATE TABLE {schema}.chain_links (
    device_id  text        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq >= 1),
    tenant_id  text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('op', 'skipped', 'gap')),
    prev_hash  bytea,
    op_hash    bytea,
    event_id   text,
    linked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, seq)
);

CREATE TABLE {schema}.chain_heads (
    device_id  text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    head_seq   bigint      NOT NULL CHECK (head_seq >= 0),
    head_hash  bytea,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chain_heads_by_tenant ON {schema}.chain_heads (tenant_id);
