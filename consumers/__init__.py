"""Consumers: the Kafka consumer runtime and the services that project change events."""
