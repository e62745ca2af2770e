-- task v3: due_at (timestamp) and labels added; due kept (deprecated) and served in step with due_at.
-- due_at of existing rows comes from code (parse_due), which SQL cannot run: rebuild after deploying
-- (docs/runbooks/replay-and-rebuild.md); until then old rows show due_at NULL.
ALTER TABLE {schema}.task ADD COLUMN due_at timestamptz;
ALTER TABLE {schema}.task ADD COLUMN labels text[];
UPDATE {schema}.task SET labels = '{}' WHERE NOT deleted;
