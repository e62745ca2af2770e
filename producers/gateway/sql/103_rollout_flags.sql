-- Gateway: live rollout cohorts per entity type (producers/gateway/rollout.py). A row replaces the cohort of
-- schemas/subjects.toml for every gateway instance from its next handshake on; no row = subjects.toml.
CREATE TABLE {schema}.rollout_flags (
    entity     text             PRIMARY KEY,
    tenants    text[]           NOT NULL DEFAULT '{}',
    percent    double precision NOT NULL DEFAULT 0 CHECK (percent >= 0 AND percent <= 100),
    updated_at timestamptz      NOT NULL DEFAULT now()
);
