"""The sensor: reads a CSV and publishes one reading per row over MQTT."""
