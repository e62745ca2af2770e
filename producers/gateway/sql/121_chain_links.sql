-- Security: the chain link of every consumed seq (docs/security.md, "Tamper evidence"), so the gateway
-- checks each new op against its predecessor across pushes and forwards the links of refused ops.
ALTER TABLE {schema}.device_seq_outcomes
    ADD COLUMN op_hash   bytea,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN signature bytea;
