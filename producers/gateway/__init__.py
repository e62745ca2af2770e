"""The gateway: device sessions, push into Kafka, pull from the outbox, live stream (docs/gateway-api.md)."""
