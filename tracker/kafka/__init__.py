"""Kafka plumbing: the embedded development broker, client settings and topic creation."""
