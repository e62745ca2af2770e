"""The local stack: real Kafka, a real schema registry, PostgreSQL and Toxiproxy without Docker."""
