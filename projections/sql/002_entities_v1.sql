-- One table per entity type: typed columns of the payload (catalog v1) plus merge metadata.
-- `state` holds what conflict_rules.EntityState needs (field stamps, tombstone, bounded write history);
-- `clock` is the winning stamp of the row; `last_tx` feeds tombstone compaction (acknowledged by every device).

CREATE TABLE {schema}.task (
    tenant_id     text        NOT NULL,
    entity_id     text        NOT NULL,
    title         text,
    notes         text,
    due           text,
    status        text,
    project_id    text,
    deleted       boolean     NOT NULL DEFAULT false,
    clock         text,
    origin_device text,
    last_event_id text,
    state         jsonb,
    last_tx       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity_id)
);

CREATE TABLE {schema}.project (
    tenant_id     text        NOT NULL,
    entity_id     text        NOT NULL,
    name          text,
    color         text,
    archived      boolean,
    deleted       boolean     NOT NULL DEFAULT false,
    clock         text,
    origin_device text,
    last_event_id text,
    state         jsonb,
    last_tx       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity_id)
);

CREATE TABLE {schema}.comment (
    tenant_id     text        NOT NULL,
    entity_id     text        NOT NULL,
    task_id       text,
    body          text,
    author        text,
    deleted       boolean     NOT NULL DEFAULT false,
    clock         text,
    origin_device text,
    last_event_id text,
    state         jsonb,
    last_tx       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity_id)
);
