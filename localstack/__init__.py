"""The local stack: the pipeline's servers (Mosquitto, Kafka, FerretDB, mongo-express) run natively.

``bash localstack/install.sh`` installs them; ``python -m localstack start|stop|status|logs``
runs them; :mod:`localstack.stack` is the Python API the tests use, and
:mod:`localstack.services` runs the pipeline's own services as processes.
"""
