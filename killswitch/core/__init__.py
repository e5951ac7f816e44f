"""The pure core: decisions only. Imports nothing from the I/O shell (Kafka, HTTP, Prometheus)."""
