"""Kafka in and out: the alert consumer, its outputs and start-up readers (the I/O shell).

``consumer.Intake`` drives the engine from the alerts and manual topics;
``outputs.Publisher`` writes results, halt state, dead letters and dead-man
alerts; ``readers`` restores halt state and rebuilds the dedup window;
``kafka`` builds every aiokafka client from the settings.
"""
