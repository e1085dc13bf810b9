"""The local stack: the pipeline's servers (Mosquitto, Kafka, FerretDB, mongo-express) run natively.

``bash localstack/install.sh`` installs them; ``python -m localstack start|stop|status|logs``
runs them. Read the package top-down:

- :mod:`localstack.config`: the environment variables (pydantic-settings) and :class:`StackConfig`;
- :mod:`localstack.process`: launching, recording and signalling a server's process group;
- :mod:`localstack.servers`: one module per server, its configuration rendered from
  the file Compose uses (``mosquitto/mosquitto.conf``, ``docker-compose.yml``);
- :mod:`localstack.stack`: :class:`Stack`, the Python API the tests use, which starts
  and stops them.

:mod:`localstack.services` runs the pipeline's own services as processes, and
:mod:`localstack.testing` a throwaway stack for the tests and benchmarks.
"""
