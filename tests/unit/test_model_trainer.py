"""The trainer's decisions and the trained models' place in line, with no server.

The trainer's history reader is replaced by a list of readings and its
``model_versions`` collection by a recording one; fits are real (``trend``,
as ``train --kind trend`` fits it), files are real.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import joblib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo.database import Database

import Models_analysis.trainer as trainer_module
from Models_analysis import history
from Models_analysis.holdout import thin, verdict
from Models_analysis.model import file_hash, load_model
from Models_analysis.registry import ModelRegistry
from Models_analysis.settings import TrainerSettings
from Models_analysis.trainer import HISTORY_KEPT, Trainer
from Models_analysis.walkforward import Scores
from pipeline import contract
from tests.unit.models import ConstantModel

LATEST = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Collection:
    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []
        #: What updates by ``_id`` wrote (model_history), by ``_id``.
        self.by_id: dict[str, dict[str, Any]] = {}

    def insert_one(self, document: dict[str, Any]) -> None:
        self.documents.append(document)

    def find_one(self, query: dict[str, Any], projection: dict[str, int]) -> dict[str, Any] | None:
        assert query.keys() == {"_id"}, "by _id only: anything else is a scan on FerretDB"
        return self.by_id.get(query["_id"])

    def update_one(self, query: dict[str, Any], update: dict[str, Any], upsert: bool = False) -> None:
        assert query.keys() == {"_id"} and update.keys() == {"$set"} and upsert, (query, update)
        self.by_id[query["_id"]] = {**self.by_id.get(query["_id"], {"_id": query["_id"]}), **update["$set"]}


class Db(dict[str, Collection]):
    def __missing__(self, name: str) -> Collection:
        self[name] = Collection()
        return self[name]


def series(sensor: str, level: float = 100.0, hours: int = 48) -> list[contract.Reading]:
    """One reading a minute up to LATEST: a daily wave around ``level`` with a little deterministic noise."""
    found = []
    for k in range(hours * 60):
        ts = LATEST - timedelta(minutes=k)
        v = level + 10 * math.sin(2 * math.pi * ts.timestamp() / 86_400) + ((k * 7919) % 11 - 5) / 5
        found.append(contract.Reading(id=f"{sensor}-{k}", sensor=sensor, ts=ts, v=v))
    return sorted(found, key=lambda r: r.ts)


def save(path: Path, model: Any, name: str) -> str:
    joblib.dump({"model": model, "metadata": {"name": name}}, path)
    return file_hash(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    models, trained = tmp_path / "models", tmp_path / "trained"
    models.mkdir()
    trained.mkdir()
    return models, trained


def trainer(models: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, **values: Any) -> tuple[Trainer, Db]:
    readings = {"s1": series("s1")}

    def stored(_db: Any, sensor: str, since: datetime, until: datetime) -> list[contract.Reading]:
        return [r for r in readings.get(sensor, []) if since <= r.ts < until]

    monkeypatch.setattr(history, "readings", stored)
    defaults: dict[str, Any] = {
        "MONGO_URI": "mongodb://u:p@127.0.0.1:1/db",
        "MODEL_PATH": models,
        "MODEL_TRAINED_PATH": trained,
        "TRAINER_KIND": "trend",
        "TRAINER_WINDOW_S": 2 * 86_400,
        "TRAINER_HOLDOUT_S": 6 * 3600,
        "TRAINER_MIN_READINGS": 100,
    }
    config = TrainerSettings(**{**defaults, **values})
    db = Db()
    return Trainer(config, cast(Database[dict[str, Any]], db), clock=lambda: LATEST), db


def test_a_better_challenger_is_promoted_and_recorded(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    default = save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, db = trainer(models, trained, monkeypatch)
    decision = built.consider("s1", LATEST)
    assert decision is not None and decision["promoted"], decision
    out = trained / "s1.joblib"
    assert out.is_file() and not list(trained.glob("*.challenger"))
    served = load_model(out)
    assert served.identity.hash == decision["model"]["hash"] and served.metadata["trainer"] is True
    assert decision["incumbent"] == {"name": "far-off", "hash": default, "source": "default"}
    ours, theirs = decision["metrics"]["challenger"], decision["metrics"]["incumbent"]
    assert ours["mae"] < theirs["mae"] and ours["n"] == theirs["n"] == 6 * 60
    assert db[contract.COLLECTION_MODEL_VERSIONS].documents == [decision]
    assert decision["_id"].startswith("s1|") and decision["rows"] == {"fit": 42 * 60, "holdout": 6 * 60}
    (kept,) = db[contract.COLLECTION_MODEL_HISTORY].by_id["s1"]["decisions"]
    assert kept["id"] == decision["_id"] and kept["model"] == decision["model"] and kept["promoted"]
    assert kept["metrics"] == decision["metrics"] and kept["decided_at"] == LATEST


def test_a_worse_challenger_is_refused_and_the_served_model_stays(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, db = trainer(models, trained, monkeypatch)
    first = built.consider("s1", LATEST)
    assert first is not None and first["promoted"]
    before = file_hash(trained / "s1.joblib")
    # The same data again: the trained incumbent is as good as any new challenger, so none is promoted.
    second = built.consider("s1", LATEST)
    assert second is not None and not second["promoted"], second
    assert "TRAINER_MIN_GAIN" in second["reason"] and second["incumbent"]["source"] == "trained"
    assert file_hash(trained / "s1.joblib") == before and not list(trained.glob("*.challenger"))
    assert [d["promoted"] for d in db[contract.COLLECTION_MODEL_VERSIONS].documents] == [True, False]


def test_a_users_own_model_is_kept_unless_they_opt_in(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    save(models / "s1.joblib", ConstantModel(10.0, 5.0), "mine")
    built, _ = trainer(models, trained, monkeypatch)
    decision = built.consider("s1", LATEST)
    assert decision is not None and not decision["promoted"] and "TRAINER_REPLACE_USER_MODELS" in decision["reason"]
    assert "metrics" not in decision, "nothing is fitted for a sensor the user keeps"
    assert not (trained / "s1.joblib").exists()
    opted, _ = trainer(models, trained, monkeypatch, TRAINER_REPLACE_USER_MODELS=True)
    decision = opted.consider("s1", LATEST)
    assert decision is not None and decision["promoted"] and decision["incumbent"]["source"] == "user"


def test_too_little_history_gets_no_challenger(folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, db = trainer(models, trained, monkeypatch, TRAINER_MIN_READINGS=10_000)
    assert built.consider("s1", LATEST) is None and built.consider("unknown", LATEST) is None
    assert not db[contract.COLLECTION_MODEL_VERSIONS].documents


def test_the_trained_model_serves_its_sensor_before_model_paths(folders: tuple[Path, Path]) -> None:
    models, trained = folders
    default = save(models / "default.joblib", ConstantModel(1.0, 1.0), "default")
    own = save(models / "s2.joblib", ConstantModel(2.0, 1.0), "own")
    registry = ModelRegistry(models, check_every_s=0.1, trained=trained)
    assert registry.for_sensor("s1").identity.hash == default  # type: ignore[union-attr]
    fitted = save(trained / "s1.joblib", ConstantModel(3.0, 1.0), "trained")
    registry.refresh(force=True)
    assert registry.for_sensor("s1").identity.hash == fitted  # type: ignore[union-attr]
    assert registry.for_sensor("s2").identity.hash == own  # type: ignore[union-attr]
    (trained / "s1.joblib").unlink()
    registry.refresh(force=True)
    assert registry.for_sensor("s1").identity.hash == default, "removed: back to the default"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("challenger", "incumbent", "promoted"),
    [
        (Scores(100, 1.0, 0.99, 4), Scores(100, 2.0, 0.99, 4), True),
        (Scores(100, 1.9, 0.99, 4), Scores(100, 2.0, 0.99, 4), False),  # under 5 % better
        (Scores(100, 2.5, 0.99, 4), Scores(100, 2.0, 0.99, 4), False),  # worse
        (Scores(100, 1.0, 0.80, 1), Scores(100, 2.0, 0.99, 4), False),  # better MAE, interval far too narrow
        (Scores(100, 1.0, 0.95, 3), Scores(100, 2.0, 0.97, 4), True),  # within the coverage slack
        (Scores(100, 1.0, 0.99, 4), None, True),  # nothing could forecast before
        (Scores(100, 0.0, 1.0, 1), Scores(100, 0.0, 1.0, 1), False),  # both perfect: keep what serves
    ],
)
def test_verdict(challenger: Scores, incumbent: Scores | None, promoted: bool) -> None:
    assert verdict(challenger, incumbent, 0.05, 0.99)[0] is promoted


@given(rows=st.integers(0, 3000), most=st.integers(10, 500))
def test_thinning_keeps_at_most_the_bound_in_order_with_both_ends(rows: int, most: int) -> None:
    frame = pd.DataFrame({"ds": pd.date_range("2026-01-01", periods=rows, freq="1min"), "y": np.arange(rows)})
    kept = thin(frame, most)
    assert len(kept) == min(rows, most) or (rows > most and len(kept) <= most)
    assert kept["y"].is_monotonic_increasing
    if rows:
        assert kept["y"].iloc[0] == 0 and kept["y"].iloc[-1] == rows - 1


def test_the_window_and_the_most_readings_bound_what_a_fit_takes(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, _ = trainer(models, trained, monkeypatch, TRAINER_WINDOW_S=86_400, TRAINER_MAX_READINGS=500)
    asked: list[tuple[datetime, datetime]] = []
    stored = history.readings

    def spy(db: Any, sensor: str, since: datetime, until: datetime) -> list[contract.Reading]:
        asked.append((since, until))
        return stored(db, sensor, since, until)

    monkeypatch.setattr(history, "readings", spy)
    decision = built.consider("s1", LATEST)
    assert asked == [(LATEST + timedelta(milliseconds=1) - timedelta(days=1), LATEST + timedelta(milliseconds=1))]
    assert decision is not None and decision["rows"] == {"fit": 500, "holdout": 6 * 60}, "18 h thinned to 500"


def test_the_kind_and_interval_width_are_the_fitted_models(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, _ = trainer(models, trained, monkeypatch, TRAINER_INTERVAL_WIDTH=0.9)
    decision = built.consider("s1", LATEST)
    assert decision is not None and decision["promoted"] and decision["kind"] == "trend"
    served = load_model(trained / "s1.joblib")
    assert type(served.model.model).__name__ == "TrendModel" and served.model.level == 0.9
    assert served.metadata["interval_width"] == 0.9


def test_min_gain_decides_how_much_better_a_challenger_must_be(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(90.0, 15.0), "near")
    strict, _ = trainer(models, trained, monkeypatch, TRAINER_MIN_GAIN=0.95)
    refused = strict.consider("s1", LATEST)
    assert refused is not None and not refused["promoted"] and "95 % below" in refused["reason"]
    lenient, _ = trainer(models, trained, monkeypatch, TRAINER_MIN_GAIN=0.0)
    assert (lenient.consider("s1", LATEST) or {})["promoted"]


def test_a_round_every_trainer_every_s(folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    models, trained = folders
    built, _ = trainer(models, trained, monkeypatch, TRAINER_EVERY_S=1)
    rounds: list[float] = []

    def one_round(due_only: bool = False) -> list[dict[str, Any]]:
        assert due_only, "the loop considers only the sensors that are due"
        rounds.append(time.monotonic())
        if len(rounds) == 3:
            built.stop.set()
        return []

    monkeypatch.setattr(built, "round", one_round)
    built.run()
    assert len(rounds) == 3 and all(0.9 <= b - a <= 3 for a, b in zip(rounds, rounds[1:], strict=False))


def test_trainer_main_lowers_its_priority_and_needs_model_trained_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TrainerSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MONGO_URI", "mongodb://u:p@127.0.0.1:1/db")
    monkeypatch.setenv("HEALTH_PORT", "0")
    assert trainer_module.main() == 2, "no MODEL_TRAINED_PATH: refuses to start"
    niced: list[int] = []
    monkeypatch.setattr(trainer_module.os, "nice", niced.append)
    monkeypatch.setattr(trainer_module.lifecycle, "stop_event", threading.Event)
    monkeypatch.setattr(trainer_module.lifecycle, "supervise", lambda workers, stop, summary, every_s: 0)
    monkeypatch.setenv("MODEL_TRAINED_PATH", str(tmp_path / "trained"))
    monkeypatch.setenv("TRAINER_NICE", "7")
    assert trainer_module.main() == 0
    assert niced == [7] and (tmp_path / "trained").is_dir()


def test_a_sensors_latest_decisions_are_kept_in_one_document_newest_first(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live page reads a sensor's decisions by ``_id``: the trainer keeps the latest HISTORY_KEPT in one document,
    the whole list set at once (FerretDB ignores $push with $slice); the same decision again replaces its entry."""
    models, trained = folders
    built, db = trainer(models, trained, monkeypatch)
    for k in range(HISTORY_KEPT + 5):
        built.record({"sensor": "s1", "model": {"name": f"c{k}", "hash": f"h{k}"}, "promoted": False, "reason": "r"})
    built.record({"sensor": "s2", "promoted": False, "reason": "own model"})
    built.record(
        {"sensor": "s1", "model": {"name": "again", "hash": f"h{HISTORY_KEPT + 4}"}, "promoted": True} | {"reason": "r"}
    )
    decisions = db[contract.COLLECTION_MODEL_HISTORY].by_id["s1"]["decisions"]
    assert [d["model"]["hash"] for d in decisions] == [f"h{k}" for k in reversed(range(5, HISTORY_KEPT + 5))]
    assert decisions[0]["model"]["name"] == "again" and decisions[0]["promoted"], "recorded again: replaced"
    assert len(db[contract.COLLECTION_MODEL_VERSIONS].documents) == HISTORY_KEPT + 7, "model_versions keeps every one"
    (other,) = db[contract.COLLECTION_MODEL_HISTORY].by_id["s2"]["decisions"]
    assert other["model"] is None and other["metrics"] is None and other["reason"] == "own model"


def test_a_sensor_with_too_little_history_is_looked_at_again_after_trainer_retry_s_and_one_decided_after_a_day(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, trained = folders
    save(models / "default.joblib", ConstantModel(10.0, 5.0), "far-off")
    built, _ = trainer(models, trained, monkeypatch, TRAINER_RETRY_S=600, TRAINER_EVERY_S=86_400)
    now = [1_000.0]
    built.monotonic = lambda: now[0]
    considered: list[str] = []
    monkeypatch.setattr(history, "sensors", lambda _db: {"s1": LATEST, "young": LATEST})
    decide = built.consider

    def consider(sensor: str, latest: datetime) -> dict[str, Any] | None:
        considered.append(sensor)
        return decide(sensor, latest)

    monkeypatch.setattr(built, "consider", consider)
    first = built.round(due_only=True)
    assert considered == ["s1", "young"] and [d["sensor"] for d in first] == ["s1"], "young has no readings"
    now[0] += 599
    assert built.round(due_only=True) == [] and considered == ["s1", "young"], "nobody is due yet"
    now[0] += 1
    built.round(due_only=True)
    assert considered == ["s1", "young", "young"], "young again after TRAINER_RETRY_S, s1 not"
    now[0] = 1_000.0 + 86_400
    built.round(due_only=True)
    assert considered[3:] == ["s1", "young"], "s1 a day after its decision"
    built.round()
    assert considered[5:] == ["s1", "young"], "a round that is not due_only takes every sensor"
