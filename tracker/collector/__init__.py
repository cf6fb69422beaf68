"""The HTTP collector: validates touchpoints and writes them to Kafka."""
