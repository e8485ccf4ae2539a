"""MQTT -> Kafka bridge: shared-subscription MQTT 5 consumer, at-least-once into `sensor-data`."""
