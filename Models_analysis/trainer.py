"""Continuous training: a challenger per sensor, promoted only when it beats the model serving that sensor.

    python -m Models_analysis.trainer

Every TRAINER_EVERY_S, for each sensor with enough history (TRAINER_MIN_READINGS
readings before the holdout; a sensor without is looked at again every
TRAINER_RETRY_S), one at a time:

1. its readings of the trailing TRAINER_WINDOW_S, up to its latest reading, are
   read from the bridge's per-minute documents by ``_id`` (Models_analysis.history:
   never a filter on ``readings``, which FerretDB would answer with a full scan),
   thinned evenly to at most TRAINER_MAX_READINGS (bounded memory);
2. a challenger of TRAINER_KIND is fitted, as ``train`` fits it, on the window
   without its most recent TRAINER_HOLDOUT_S;
3. the challenger and the incumbent (the model serving the sensor now: the
   trainer's own earlier one, else the sensor's own model, else the default)
   forecast the holdout; the challenger is promoted only when its MAE is at
   least TRAINER_MIN_GAIN below the incumbent's and its interval's coverage is
   no worse (at most 0.05 below the incumbent's, or above the nominal level):
   :mod:`Models_analysis.holdout`;
4. promotion is an atomic rename into MODEL_TRAINED_PATH/<sensor>.joblib, which
   the model service watches (MODEL_TRAINED_PATH, MODEL_RELOAD_CHECK_S);
5. each decision is stored in ``model_versions``: the sensor, both models'
   identities and holdout metrics, promoted or not and why; and the latest
   HISTORY_KEPT of a sensor's decisions in its ``model_history`` document
   (``_id`` = the sensor), which the live page reads by ``_id``: ``model_versions``
   can only be listed by sensor with a filter, which FerretDB answers by a scan.

A sensor with a model of the user's own (MODEL_PATH/<sensor>.joblib) is never
given a trained one unless TRAINER_REPLACE_USER_MODELS is on; the refusal is
recorded. The trainer never slows scoring: it is a process of its own, at a
lower CPU priority (TRAINER_NICE), fitting one model at a time. SIGTERM stops
it after the fit under way.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pymongo.database import Database
from pymongo.errors import PyMongoError

from Models_analysis import history, train
from Models_analysis.baselines import human
from Models_analysis.holdout import MIN_HOLDOUT_READINGS, holdout_scores, thin, verdict
from Models_analysis.model import LoadedModel, ModelError, load_model
from Models_analysis.registry import DEFAULT, SUFFIX
from Models_analysis.settings import TrainerSettings
from Models_analysis.walkforward import Scores
from pipeline import contract, lifecycle, logs, settings
from pipeline.health import Dependency, HealthServer
from pipeline.mongo import mongo_client

logger = logging.getLogger("Models_analysis.trainer")

#: Decisions kept in a sensor's ``model_history`` document.
HISTORY_KEPT = 20
#: How a challenger waits in MODEL_TRAINED_PATH before it is promoted or deleted (not ``*.joblib``: never served).
CHALLENGER_SUFFIX = ".challenger"


@dataclass
class Incumbent:
    """The model serving a sensor now, and where it comes from: trained, the user's own, or the default."""

    loaded: LoadedModel | None
    source: str


@dataclass
class Trainer:
    """One trainer: its settings, its database, and ``fit`` (how a challenger is fitted; tests pass their own)."""

    config: TrainerSettings
    db: Database[dict[str, Any]]
    stop: threading.Event = field(default_factory=threading.Event)
    fit: Callable[[pd.DataFrame], Any] | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    mongo: Dependency = field(default_factory=lambda: Dependency("mongo"))
    monotonic: Callable[[], float] = time.monotonic
    #: When each sensor is next due (``monotonic`` time): after a decision TRAINER_EVERY_S, else TRAINER_RETRY_S.
    due: dict[str, float] = field(default_factory=dict)
    decisions: int = 0
    promotions: int = 0

    @property
    def trained_path(self) -> Path:
        assert self.config.MODEL_TRAINED_PATH is not None
        return self.config.MODEL_TRAINED_PATH

    def run(self) -> None:
        """Until stopped: each sensor once every TRAINER_EVERY_S, or TRAINER_RETRY_S while it had too little history."""
        pause = min(self.config.TRAINER_EVERY_S, self.config.TRAINER_RETRY_S)
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                self.round(due_only=True)
            except PyMongoError as error:
                self.mongo.down(f"MongoDB: {error}")
                logger.warning("MongoDB could not be read or written (%s); trying again in a minute", error)
                self.stop.wait(60)
                continue
            self.stop.wait(max(0.0, pause - (time.monotonic() - began)))

    def round(self, due_only: bool = False) -> list[dict[str, Any]]:
        """One pass over every sensor (``due_only``: those whose time has come); returns the decisions recorded."""
        sensors = history.sensors(self.db)
        self.mongo.up()
        recorded, considered = [], 0
        for sensor, latest in sorted(sensors.items()):
            if self.stop.is_set():
                break
            if due_only and self.due.get(sensor, -math.inf) > self.monotonic():
                continue
            considered += 1
            decision = self.consider(sensor, latest)
            if decision is not None:
                recorded.append(decision)
            wait = self.config.TRAINER_EVERY_S if decision is not None else self.config.TRAINER_RETRY_S
            self.due[sensor] = self.monotonic() + min(wait, self.config.TRAINER_EVERY_S)
        if considered:
            logger.info(
                "round done: %d sensors, %d decisions (%d promotions), %d with too little history",
                considered,
                len(recorded),
                sum(bool(d["promoted"]) for d in recorded),
                considered - len(recorded),
            )
        return recorded

    def incumbent(self, sensor: str) -> Incumbent:
        """The model serving ``sensor`` now, as the model service chooses it."""
        model_path = self.config.MODEL_PATH
        candidates = [(self.trained_path / f"{sensor}{SUFFIX}", "trained")]
        if model_path.is_dir():
            candidates += [(model_path / f"{sensor}{SUFFIX}", "user"), (model_path / f"{DEFAULT}{SUFFIX}", "default")]
        else:
            candidates.append((model_path, "default"))
        for path, source in candidates:
            if path.is_file():
                try:
                    return Incumbent(load_model(path), source)
                except ModelError as error:
                    logger.warning("the incumbent %s cannot be loaded (%s); the next in line is used", path, error)
        return Incumbent(None, "none")

    def consider(self, sensor: str, latest: datetime) -> dict[str, Any] | None:
        """Fit, compare and maybe promote a challenger for one sensor; the decision, or None if too little history."""
        config = self.config
        incumbent = self.incumbent(sensor)
        base = {"sensor": sensor, "incumbent": _identity(incumbent)}
        if incumbent.source == "user" and not config.TRAINER_REPLACE_USER_MODELS:
            return self.record(
                {
                    **base,
                    "promoted": False,
                    "reason": "the sensor has a model of its own in MODEL_PATH; "
                    "TRAINER_REPLACE_USER_MODELS is off, so it is never replaced",
                }
            )
        until = latest + timedelta(milliseconds=1)
        since = until - timedelta(seconds=config.TRAINER_WINDOW_S)
        points = history.readings(self.db, sensor, since, until)
        frame = pd.DataFrame(
            {"ds": pd.to_datetime([p.ts.replace(tzinfo=None) for p in points]), "y": [p.v for p in points]}
        )
        del points
        holdout_start = (until - timedelta(seconds=config.TRAINER_HOLDOUT_S)).replace(tzinfo=None)
        fit_part = thin(frame[frame["ds"] < holdout_start].reset_index(drop=True), config.TRAINER_MAX_READINGS)
        holdout = thin(frame[frame["ds"] >= holdout_start].reset_index(drop=True), config.TRAINER_MAX_READINGS)
        del frame
        if len(fit_part) < config.TRAINER_MIN_READINGS or len(holdout) < MIN_HOLDOUT_READINGS:
            logger.debug(
                "sensor %s: %d readings before the holdout and %d in it; not enough for a challenger",
                sensor,
                len(fit_part),
                len(holdout),
            )
            return None
        window = {"since": since, "until": until, "holdout_since": holdout_start.replace(tzinfo=UTC)}
        rows = {"fit": len(fit_part), "holdout": len(holdout)}
        logger.info("sensor %s: fitting a %s challenger on %d readings", sensor, config.TRAINER_KIND, len(fit_part))
        started = time.monotonic()
        try:
            challenger = self._fit(fit_part)
        except Exception as error:  # noqa: BLE001 - a fit that fails is a decision like any other
            logger.warning("sensor %s: the challenger could not be fitted: %s", sensor, error)
            return self.record(
                {**base, "promoted": False, "reason": f"the fit failed: {type(error).__name__}: {error}"}
            )
        fit_seconds = time.monotonic() - started
        out = self.trained_path / f"{sensor}{SUFFIX}"
        waiting = self.trained_path / f"{sensor}{SUFFIX}{CHALLENGER_SUFFIX}"
        name = f"{sensor}-{self.clock().strftime('%Y%m%dT%H%M%SZ')}"
        source = f"trainer: {config.TRAINER_KIND} on mongodb readings of {sensor}, {since.isoformat()} .. {until}"
        metadata = train.save(
            challenger,
            fit_part,
            waiting,
            name,
            source,
            config.TRAINER_INTERVAL_WIDTH,
            extra={"trainer": True, "holdout_since": holdout_start.isoformat()},
        )
        identity = {"name": name, "hash": metadata["hash"]}
        try:
            ours = holdout_scores(challenger, holdout)
        except Exception as error:  # noqa: BLE001
            waiting.unlink(missing_ok=True)
            return self.record(
                {
                    **base,
                    "model": identity,
                    "promoted": False,
                    "reason": f"the challenger could not forecast the holdout: {error}",
                }
            )
        theirs: Scores | None = None
        if incumbent.loaded is not None:
            try:
                theirs = holdout_scores(incumbent.loaded.model, holdout)
            except Exception as error:  # noqa: BLE001 - an incumbent that cannot forecast loses
                logger.warning("sensor %s: the incumbent could not forecast the holdout: %s", sensor, error)
        promoted, reason = verdict(ours, theirs, config.TRAINER_MIN_GAIN, config.TRAINER_INTERVAL_WIDTH)
        if promoted:
            # Atomic: the model service never reads half a file (it watches this folder).
            os.replace(waiting, out)
            self.promotions += 1
        else:
            waiting.unlink(missing_ok=True)
        logger.info(
            "sensor %s: challenger %s (hash %s) %s: %s",
            sensor,
            name,
            metadata["hash"],
            "promoted" if promoted else "not promoted",
            reason,
        )
        del challenger
        gc.collect()
        return self.record(
            {
                **base,
                "model": identity,
                "kind": config.TRAINER_KIND,
                "metrics": {"challenger": ours.as_dict(), "incumbent": theirs.as_dict() if theirs else None},
                "promoted": promoted,
                "reason": reason,
                "window": window,
                "rows": rows,
                "fit_seconds": fit_seconds,
                "path": str(out) if promoted else None,
            }
        )

    def _fit(self, frame: pd.DataFrame) -> Any:
        if self.fit is not None:
            return self.fit(frame)
        span = pd.Timedelta(seconds=self.config.TRAINER_EVERY_S)
        return train.fit(
            self.config.TRAINER_KIND, frame, self.config.TRAINER_INTERVAL_WIDTH, horizon=span, progress=False
        )

    def record(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Store one decision in ``model_versions`` (``_id``: sensor, time, challenger hash)."""
        decided_at = self.clock()
        challenger = (decision.get("model") or {}).get("hash", "none")
        document = {
            "_id": f"{decision['sensor']}|{contract.iso(decided_at)}|{challenger}",
            **decision,
            "decided_at": decided_at,
        }
        self.db[contract.COLLECTION_MODEL_VERSIONS].insert_one(document)
        self.remember(document)
        self.mongo.up()
        self.decisions += 1
        return document

    def remember(self, document: dict[str, Any]) -> None:
        """Put a decision first in its sensor's ``model_history`` document, keeping the latest HISTORY_KEPT.

        Read by ``_id``, then the whole list ``$set`` by ``_id``: FerretDB 1.24 ignores
        ``$push`` with ``$slice`` without an error. One trainer writes it, so nothing
        comes between the read and the write; a decision recorded again (same ``_id``)
        replaces its entry.
        """
        collection = self.db[contract.COLLECTION_MODEL_HISTORY]
        sensor = document["sensor"]
        stored = collection.find_one({"_id": sensor}, {"decisions": 1}) or {}
        entry = history_entry(document)
        earlier = [d for d in stored.get("decisions") or [] if d.get("id") != entry["id"]]
        decisions = [entry, *earlier][:HISTORY_KEPT]
        collection.update_one(
            {"_id": sensor}, {"$set": {"decisions": decisions, "updated_at": document["decided_at"]}}, upsert=True
        )


def history_entry(document: dict[str, Any]) -> dict[str, Any]:
    """A decision as the sensor's ``model_history`` keeps it: who, when, the verdict and both holdout scores."""
    return {
        "id": document["_id"],
        "decided_at": document["decided_at"],
        "model": document.get("model"),
        "incumbent": document.get("incumbent"),
        "kind": document.get("kind"),
        "promoted": document["promoted"],
        "reason": document["reason"],
        "metrics": document.get("metrics"),
    }


def _identity(incumbent: Incumbent) -> dict[str, Any] | None:
    if incumbent.loaded is None:
        return None
    return {**incumbent.loaded.identity.model_dump(), "source": incumbent.source}


def main() -> int:
    """Train until SIGTERM."""
    config = settings.load(TrainerSettings)
    logs.setup(config.LOG_LEVEL, "trainer")
    if config.MODEL_TRAINED_PATH is None:
        logger.error("MODEL_TRAINED_PATH: set it to the folder the model service reads trained models from")
        return 2
    config.MODEL_TRAINED_PATH.mkdir(parents=True, exist_ok=True)
    if config.TRAINER_NICE:
        os.nice(config.TRAINER_NICE)
    stop = lifecycle.stop_event()
    # TLS as every service: MONGO_TLS_CA_FILE (pipeline.mongo).
    client = mongo_client(config, tz_aware=True, serverSelectionTimeoutMS=10_000, appname="trainer")
    trainer = Trainer(config, client[config.MONGO_DATABASE], stop)
    worker = threading.Thread(target=trainer.run, name="trainer")
    health = HealthServer(
        config.HEALTH_PORT, ready={"mongo": trainer.mongo}, alive=lambda: worker.is_alive() or worker.ident is None
    )
    health.start()

    def summary() -> None:
        logger.info("%d decisions recorded, %d promotions", trainer.decisions, trainer.promotions)

    logger.info(
        "training a %s challenger per sensor every %s on its last %s, into %s",
        config.TRAINER_KIND,
        human(timedelta(seconds=config.TRAINER_EVERY_S)),
        human(timedelta(seconds=config.TRAINER_WINDOW_S)),
        config.MODEL_TRAINED_PATH,
    )
    try:
        return lifecycle.supervise([worker], stop, summary, every_s=300)
    finally:
        health.stop()
        client.close()
        logger.info("trainer stopped")


if __name__ == "__main__":
    raise SystemExit(main())
