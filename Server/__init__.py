"""The bridge: MQTT readings into MongoDB and Kafka, Kafka predictions into MongoDB."""
