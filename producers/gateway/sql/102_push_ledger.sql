-- Gateway: each device's durable head seq and the outcome of every seq it consumed. A push holds
-- pg_advisory_xact_lock on the device for its whole transaction, so pushes of one device are serialised
-- across gateway instances; the head moves only after the broker acknowledged the accepted records.
CREATE TABLE {schema}.device_heads (
    device_id  text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    head_seq   bigint      NOT NULL CHECK (head_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- accepted: produced and acknowledged; rejected: refused for good (code, reason); abandoned: given up by the
-- device before the gateway saw it. Retries of these seqs are answered from here.
CREATE TABLE {schema}.device_seq_outcomes (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    event_id    text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('accepted', 'rejected', 'abandoned')),
    code        text,
    reason      text,
    field       text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, seq)
);
