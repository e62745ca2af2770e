-- Gateway: the Ed25519 keys that sign device tokens, shared by every gateway instance (docs/security.md,
-- "Device tokens"). The newest active key signs; retired keys keep verifying until the tokens they signed
-- have expired; a revoked key verifies nothing. private_pem is readable by the gateway and the owner only.
CREATE TABLE {schema}.token_signing_keys (
    kid          text        PRIMARY KEY,
    private_pem  bytea       NOT NULL,
    public_jwk   jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activates_at timestamptz NOT NULL,
    retired_at   timestamptz,
    revoked_at   timestamptz
);
