"""The Kafka adapter (the I/O shell): the alert consumer, its outputs, readers and the dead-man.

``consumer.Intake`` drives the engine from the alerts and manual topics;
``outputs.Publisher`` writes results, halt state, dead letters and dead-man
alerts; ``readers`` restores halt state and rebuilds the dedup window;
``deadman`` reads heartbeats and publishes the dead-man's alerts;
``clients`` builds every aiokafka client from the settings.
"""
