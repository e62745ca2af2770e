"""Schemas: the Avro event contract, registry governance, migrations and version negotiation."""
