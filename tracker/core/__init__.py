"""The pure core: plain Python over plain data. No Kafka, Faust, ClickHouse or HTTP imports here."""
