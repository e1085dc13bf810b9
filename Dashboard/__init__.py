"""The live page: sensors, forecasts, anomalies, rejections and the pipeline's health, read from MongoDB."""
