-- The state relay (consumers/state_relay.py) reads the feed rows of every tenant in commit order (tx, pos):
-- an index for that order, and one cursor row per relay, stored only after Kafka acknowledged its records.
CREATE INDEX outbox_commit_order ON {schema}.outbox (tx, pos) WHERE device_id IS NULL;

CREATE TABLE {schema}.relay_cursors (
    relay      text        PRIMARY KEY,
    cursor_tx  xid8        NOT NULL,
    cursor_pos bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
