-- task v2: notes renamed to description (Avro alias), priority added.
ALTER TABLE {schema}.task RENAME COLUMN notes TO description;
ALTER TABLE {schema}.task ADD COLUMN priority integer;
UPDATE {schema}.task SET priority = 0 WHERE NOT deleted;
