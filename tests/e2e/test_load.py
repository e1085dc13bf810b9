"""Correctness under load: at the benchmarks' top rate every reading and every prediction arrives exactly once.

Not a timing test: it pushes readings as fast as the pipeline takes them (the
bridge benchmark's saturating publishers) and checks only what arrived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import orjson
import pytest

from bench.load import publish, reading_id
from bench.probes import metric, scrape
from pipeline import contract
from tests.conftest import Pipeline, wait_for
from tests.helpers import consume

pytestmark = pytest.mark.e2e

READINGS = 20_000
SENSORS = 20
PUBLISHERS = 4


@pytest.fixture
def sensors(pipeline: Pipeline) -> Iterator[list[str]]:
    """The simulated sensors' ids; their documents are deleted afterwards.

    FerretDB answers most queries by scanning a whole collection, so 20,000
    readings and predictions left behind would slow every later test's queries.
    """
    ids = [pipeline.sensor_id(n) for n in range(SENSORS)]
    yield ids
    pipeline.stop_all()  # first, so no aggregate is written after the clean-up
    db = pipeline.db
    for collection in (
        contract.COLLECTION_READINGS,
        contract.COLLECTION_PREDICTIONS,
        contract.COLLECTION_PREDICTION_ERRORS,
        contract.COLLECTION_ALERTS,
        contract.COLLECTION_AGGREGATES,
        contract.COLLECTION_ACCURACY,
        contract.COLLECTION_ACCURACY_HOURLY,
    ):
        db[collection].delete_many({"sensor": {"$in": ids}})


def test_every_reading_and_prediction_arrives_exactly_once_under_load(pipeline: Pipeline, sensors: list[str]) -> None:
    server = pipeline.start_server()
    pipeline.start_model()
    per_sensor = READINGS // SENSORS
    expected = sorted(reading_id(sensor, n) for sensor in sensors for n in range(per_sensor))

    report = publish(pipeline.stack.env, sensors, processes=PUBLISHERS, per_sensor=per_sensor, timeout_s=120)
    assert not report.errors, report.errors
    assert (report.sent, report.acked, report.refused) == (READINGS, READINGS, 0), "the broker took every reading"

    # The bridge's own counter, not a MongoDB count: FerretDB would scan the collection on every poll.
    wait_for(
        lambda: metric(scrape(server), "pipeline_results_stored_total", kind="prediction") >= READINGS,
        120,
        f"{READINGS} predictions stored",
        pipeline.logs,
    )

    db = pipeline.db
    stored = [d["_id"] for d in db[contract.COLLECTION_READINGS].find({"sensor": {"$in": sensors}}, {"_id": 1})]
    assert sorted(stored) == expected, "MongoDB holds every reading, once"
    scored = [d["_id"] for d in db[contract.COLLECTION_PREDICTIONS].find({"sensor": {"$in": sensors}}, {"_id": 1})]
    assert sorted(scored) == expected, "MongoDB holds one prediction per reading"
    assert db[contract.COLLECTION_PREDICTION_ERRORS].count_documents({"sensor": {"$in": sensors}}) == 0
    assert db[contract.COLLECTION_REJECTIONS].count_documents({"topic": {"$regex": f"^sensors/{pipeline.name}"}}) == 0

    bootstrap = pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]
    forwarded = consume(bootstrap, pipeline.topics["KAFKA_TOPIC_READINGS"], quiet_s=2, want=READINGS)
    forwarded_ids = Counter(orjson.loads(m.value())["id"] for m in forwarded)
    assert sorted(forwarded_ids) == expected and set(forwarded_ids.values()) == {1}, (
        "Kafka's readings topic carries every reading exactly once"
    )
    results = consume(bootstrap, pipeline.topics["KAFKA_TOPIC_RESULTS"], quiet_s=2, want=READINGS)
    result_ids = Counter(orjson.loads(m.value())["id"] for m in results)
    assert sorted(result_ids) == expected and set(result_ids.values()) == {1}, (
        "Kafka's results topic carries exactly one prediction per reading"
    )
    assert metric(scrape(server), "pipeline_readings_duplicate_total") == 0, "no redelivery under load"
    batches = metric(scrape(server), "pipeline_mongo_write_seconds_count", collection=contract.COLLECTION_READINGS)
    assert batches >= READINGS / 500, "every batch insert of readings is timed (at most 500 readings a batch)"
