"""The trainer and rescore on the real FerretDB, reading what the bridge's own code writes, by ``_id`` only.

The history is written by the bridge's Timeline (Server/timeline.py) into a
database of the test's own; the trainer and rescore then run against it, every
query they send is caught (pymongo command monitoring) and explained: none may
scan a collection that grows with the data.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from Models_analysis.model import file_hash, load_model
from Models_analysis.rescore import rescore, rescored_id
from Models_analysis.settings import TrainerSettings
from Models_analysis.trainer import Trainer
from pipeline import contract
from pipeline.settings import MongoSettings
from Server.store import Store
from Server.timeline import Timeline
from tests.conftest import Pipeline
from tests.helpers import CommandLog, plan_scans
from tests.integration.test_page_queries import BOUNDED
from tests.unit.models import ConstantModel

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


@dataclass
class History:
    db: Database[dict[str, Any]]
    store: Store
    finds: CommandLog
    sensor: str
    readings: list[contract.Reading]


def wave(ts: datetime) -> float:
    return 100 + 10 * math.sin(2 * math.pi * ts.timestamp() / 86_400)


@pytest.fixture
def stored(pipeline: Pipeline) -> Iterator[History]:
    """Two days of one reading a minute of one sensor, with a constant model's forecasts, as the bridge keeps them."""
    database = f"{pipeline.name}_trainer"
    store = Store(
        MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": database})
    )
    sensor = pipeline.sensor_id(1)
    readings = [
        contract.Reading(id=f"r{i}", sensor=sensor, ts=(ts := NOW - timedelta(minutes=i)), v=wave(ts), received_at=NOW)
        for i in range(2 * 24 * 60)
    ]
    timeline = Timeline(store, threading.Event())
    timeline.touch(readings)
    # What the live model (a constant 10 ± 5) forecast for them.
    timeline.touch_predictions(
        [
            {"_id": r.id, "sensor": sensor, "ds": r.ts, "yhat": 10.0, "yhat_lower": 5.0, "yhat_upper": 15.0}
            | {"anomaly": True}
            for r in readings
        ]
    )
    timeline.flush(everything=True)
    finds = CommandLog("find")
    client: MongoClient[dict[str, Any]] = MongoClient(
        pipeline.stack.env["MONGO_URI"], tz_aware=True, event_listeners=[finds]
    )
    yield History(client[database], store, finds, sensor, readings)
    client.close()
    store.client.drop_database(database)
    store.close()


def assert_no_scans(history: History) -> None:
    for command in {str(c): c for c in history.finds.commands}.values():
        if command["find"] in BOUNDED:
            continue
        assert command["filter"].keys() == {"_id"}, command
        plan = history.store.db.command("explain", command, verbosity="queryPlanner")
        assert not plan_scans(plan), f"{command['find']} is scanned for {command}: {plan.get('queryPlanner')}"


def test_the_trainer_promotes_a_better_model_refuses_a_worse_one_and_records_both(
    stored: History, pipeline: Pipeline, tmp_path: Path
) -> None:
    models, trained = tmp_path / "models", tmp_path / "trained"
    models.mkdir()
    trained.mkdir()
    joblib.dump({"model": ConstantModel(10.0, 5.0), "metadata": {"name": "flat"}}, models / "default.joblib")
    config = TrainerSettings.model_validate(
        {
            "MONGO_URI": pipeline.stack.env["MONGO_URI"],
            "MONGO_DATABASE": stored.db.name,
            "MODEL_PATH": str(models),
            "MODEL_TRAINED_PATH": str(trained),
            "TRAINER_KIND": "trend",
            "TRAINER_WINDOW_S": 2 * 86_400,
            "TRAINER_HOLDOUT_S": 4 * 3600,
            "TRAINER_MIN_READINGS": 500,
        }
    )
    trainer = Trainer(config, stored.db)
    first = trainer.round()
    assert [d["promoted"] for d in first] == [True], first
    promoted = load_model(trained / f"{stored.sensor}.joblib")
    assert promoted.identity.hash == first[0]["model"]["hash"]
    assert first[0]["rows"] == {"fit": 44 * 60, "holdout": 4 * 60}, "every reading of the window, read by minute"

    # The promoted model is now the incumbent: the same data gives no better challenger.
    second = trainer.round()
    assert [d["promoted"] for d in second] == [False] and "TRAINER_MIN_GAIN" in second[0]["reason"]
    assert file_hash(trained / f"{stored.sensor}.joblib") == promoted.identity.hash
    assert_no_scans(stored)

    recorded = {d["_id"]: d for d in stored.db[contract.COLLECTION_MODEL_VERSIONS].find({})}
    assert set(recorded) == {first[0]["_id"], second[0]["_id"]}
    decision = recorded[first[0]["_id"]]
    assert decision["sensor"] == stored.sensor and decision["incumbent"]["name"] == "flat"
    ours, theirs = decision["metrics"]["challenger"], decision["metrics"]["incumbent"]
    assert ours["mae"] < theirs["mae"] and ours["n"] == theirs["n"] == 4 * 60

    # The sensor's latest decisions in one document, by _id, newest first: what the live page reads.
    kept = stored.db[contract.COLLECTION_MODEL_HISTORY].find_one({"_id": stored.sensor})
    assert kept is not None and [d["id"] for d in kept["decisions"]] == [second[0]["_id"], first[0]["_id"]]
    assert kept["decisions"][1]["metrics"] == decision["metrics"] and kept["decisions"][1]["promoted"]


def test_rescore_stores_a_models_forecasts_by_model_beside_the_live_accuracy(stored: History, tmp_path: Path) -> None:
    path = tmp_path / "near.joblib"
    joblib.dump({"model": ConstantModel(100.0, 20.0), "metadata": {"name": "near"}}, path)
    model = load_model(path)
    since, until = NOW - timedelta(hours=3), NOW - timedelta(hours=1)
    summary = rescore(stored.db, model, stored.sensor, since, until)
    expected = [r for r in stored.readings if since <= r.ts < until]
    assert summary["scored"] == len(expected) == 120 and summary["errors"] == 0
    ours, live = summary["compared"]["rescored"], summary["compared"]["live"]
    assert ours["n"] == live["n"] == 120
    assert ours["mae"] == pytest.approx(sum(abs(r.v - 100.0) for r in expected) / 120)
    assert live["mae"] == pytest.approx(sum(abs(r.v - 10.0) for r in expected) / 120)
    assert (ours["coverage"], live["coverage"]) == (1.0, 0.0)

    minute = expected[0].ts.replace(second=0)
    document = stored.db[contract.COLLECTION_RESCORED].find_one(
        {"_id": rescored_id(stored.sensor, model.identity.hash, minute)}
    )
    assert document is not None and document["model"] == model.identity.model_dump()
    assert [f["id"] for f in document["forecasts"]] == [expected[0].id] and document["forecasts"][0]["yhat"] == 100.0
    assert stored.db[contract.COLLECTION_RESCORES].find_one({"_id": summary["_id"]})["compared"]["live"]["n"] == 120  # type: ignore[index]
    again = rescore(stored.db, model, stored.sensor, since, until)
    assert again["_id"] == summary["_id"], "the same run again replaces its documents"

    # The sensor's re-scored models, each with its latest run, in one document found by _id (the live page's).
    other = tmp_path / "far.joblib"
    joblib.dump({"model": ConstantModel(0.0, 1.0), "metadata": {"name": "far"}}, other)
    far = load_model(other)
    rescore(stored.db, far, stored.sensor, since, until)
    later = rescore(stored.db, model, stored.sensor, since - timedelta(hours=1), until)
    listed = stored.db[contract.COLLECTION_RESCORED_MODELS].find_one({"_id": stored.sensor})
    assert listed is not None
    assert [r["model"]["name"] for r in listed["runs"]] == ["near", "far"], "newest first, one per model"
    assert listed["runs"][0]["id"] == later["_id"] and listed["runs"][1]["model"] == far.identity.model_dump()
    assert listed["runs"][0]["since"] == since - timedelta(hours=1)
    assert listed["runs"][0]["compared"] == later["compared"]
    assert_no_scans(stored)


def test_rescore_serves_intervals_as_the_service_does_adapted_per_reading_when_the_model_states_its_level(
    stored: History, tmp_path: Path
) -> None:
    since, until = NOW - timedelta(hours=3), NOW - timedelta(hours=1)
    values = sorted(r.v for r in stored.readings if since <= r.ts < until)
    centre = (values[0] + values[-1]) / 2
    half = (values[-1] - values[0]) / 2 * 1.05  # the model's own interval holds every reading of the range
    path = tmp_path / "wide.joblib"
    joblib.dump({"model": ConstantModel(centre, half), "metadata": {"name": "wide", "interval_width": 0.8}}, path)
    model = load_model(path)
    own = rescore(stored.db, model, stored.sensor, since, until, adaptive_gamma=0.0)
    assert own["compared"]["rescored"]["coverage"] == 1.0
    adapted = rescore(stored.db, model, stored.sensor, since, until, adaptive_gamma=0.1)
    assert adapted["adaptive_gamma"] == 0.1 and adapted["scored"] == 120
    coverage = adapted["compared"]["rescored"]["coverage"]
    assert 0.3 < coverage < 0.95, f"an 80 % interval that held everything narrowed towards 80 %, held {coverage}"
    minute = min(r.ts for r in stored.readings if since <= r.ts < until).replace(second=0)
    first = stored.db[contract.COLLECTION_RESCORED].find_one(
        {"_id": rescored_id(stored.sensor, model.identity.hash, minute)}
    )
    assert first is not None
    assert (first["forecasts"][0]["yhat_lower"], first["forecasts"][0]["yhat_upper"]) == (centre - half, centre + half)
