-- Projector bookkeeping: offsets (compare-and-set per batch), dedup, decisions, the outbox feed.

CREATE TABLE {schema}.consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- (device_id, device_seq) identifies an op across every entity type; a second event with the same key is
-- a redelivery (same event_id, a no-op) or a replayed seq (another event_id, dead-lettered).
CREATE TABLE {schema}.applied_ops (
    device_id   text        NOT NULL,
    device_seq  bigint      NOT NULL,
    event_id    text        NOT NULL,
    tenant_id   text        NOT NULL,
    entity_type text        NOT NULL,
    entity_id   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    log_offset  bigint      NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, device_seq)
);

CREATE TABLE {schema}.conflict_decisions (
    decision_id      text        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    entity_type      text        NOT NULL,
    entity_id        text        NOT NULL,
    field            text        NOT NULL,
    rule             text        NOT NULL,
    winner_event_id  text        NOT NULL,
    winner_device_id text        NOT NULL,
    winner_value     jsonb,
    loser_event_id   text        NOT NULL,
    loser_device_id  text        NOT NULL,
    loser_value      jsonb,
    explanation      text        NOT NULL,
    decided_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflict_decisions_entity ON {schema}.conflict_decisions (tenant_id, entity_type, entity_id);
CREATE INDEX conflict_decisions_loser ON {schema}.conflict_decisions (loser_event_id);

-- The per-tenant change feed: one row per accepted change (device_id NULL = every device of the tenant)
-- plus rows for one device only. Readers order by (tx, pos) and stop below the oldest running
-- transaction, so a transaction that commits late is never skipped.
CREATE TABLE {schema}.outbox (
    pos         bigserial   PRIMARY KEY,
    tx          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id   text        NOT NULL,
    device_id   text,
    kind        text        NOT NULL,
    entity_type text,
    entity_id   text,
    event_id    text,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_feed ON {schema}.outbox (tenant_id, tx, pos);

CREATE TABLE {schema}.device_cursors (
    tenant_id text        NOT NULL,
    device_id text        NOT NULL,
    cursor    text        NOT NULL,
    cursor_tx xid8        NOT NULL,
    cursor_pos bigint     NOT NULL,
    acked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

-- Everything at or below (pruned_tx, pruned_pos) is gone from a tenant's feed: older cursors must resync.
CREATE TABLE {schema}.outbox_horizons (
    tenant_id  text        PRIMARY KEY,
    pruned_tx  xid8        NOT NULL,
    pruned_pos bigint      NOT NULL,
    pruned_at  timestamptz NOT NULL DEFAULT now()
);

-- device_seq of manual overrides: one sequence for every operator, so each operator's seqs only grow.
CREATE SEQUENCE {schema}.operator_seq;

CREATE TABLE {schema}.projection_snapshots (
    name        text        PRIMARY KEY,
    schema_name text        NOT NULL,
    group_id    text        NOT NULL,
    entities    text[]      NOT NULL,
    offsets     jsonb       NOT NULL,
    digests     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
