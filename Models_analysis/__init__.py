"""The model service: scores readings from Kafka with a forecasting model, in micro-batches."""
