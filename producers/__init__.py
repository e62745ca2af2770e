"""Producers: device change capture (the SDK a desktop app imports) and the gateway that turns pushes into events."""
