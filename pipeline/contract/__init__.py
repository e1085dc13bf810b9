"""The message contract: the one definition of what flows through the pipeline.

Every service imports this module; a change here is a change to every service,
made once. It defines:

- the names of the MQTT topics, Kafka topics and MongoDB collections;
- a *reading* (what a sensor publishes), a *prediction* (what the model service
  returns), a *prediction error* (a reading the model could not score) and a
  *rejection* (a payload that broke the contract, kept byte-exact with a reason);
- how bytes become a validated reading (:func:`parse_reading`) and how the
  models are turned into Kafka values and MongoDB documents.

Read top-down: ``names`` (topics, collections), ``limits`` (every bound and
why a message is refused), ``messages`` (the models), ``parsing`` (bytes in).
Every service imports this package (``from pipeline import contract``), never
its modules, so a name can move between them without a caller noticing.

Readings keep the seed's field names (``ts``, ``sensor``, ``v``) so model code
written for the seed still reads them from the ``analytics`` topic.
"""

from pipeline.contract.limits import *  # noqa: F403
from pipeline.contract.messages import *  # noqa: F403
from pipeline.contract.names import *  # noqa: F403
from pipeline.contract.parsing import *  # noqa: F403
