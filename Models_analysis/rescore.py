"""Re-score a sensor's stored readings over a time range with a given model, beside the forecasts served live.

    python -m Models_analysis.rescore --sensor sensor-1 --since 2026-11-01 --until 2026-11-08 --model models/new.joblib

After a model swap (or a promotion by the trainer), this answers "how would
the new model have done on what the old one scored?". The readings come from
the bridge's per-minute documents (``aggregates``, read by ``_id``:
Models_analysis.history), each is forecast by ``--model`` at its grid time
(``--grid-ms``, the service's MODEL_TIME_GRID_MS, 1000) as the service would
score it, and the results are stored with the model's identity, so a model's
forecasts never overwrite another's:

- ``rescored``: one document per sensor, model and minute
  (``_id`` = ``<sensor>|<model hash>|<minute>``, found by ``_id`` like the
  page's ``aggregates``): ``sensor``, ``model`` {name, hash}, ``minute``, and
  ``forecasts`` [{id, ts, v, yhat, yhat_lower, yhat_upper, anomaly}];
- ``rescores``: one document per run (``_id`` =
  ``<sensor>|<model hash>|<since>|<until>``): the range, the model, and the
  accuracy of its forecasts (``n``, ``mae``, ``coverage``, ``anomalies``,
  ``mean_width``) beside that of the forecasts served live for the same
  readings (``live``, from the minute documents), compared on the readings
  both have;
- ``rescored_models``: one document per sensor (``_id`` = the sensor) listing
  the models it was re-scored with, each with its latest run's summary
  (newest first, at most RUNS_KEPT), which the live page reads by ``_id`` to
  offer them side by side (``rescores`` can only be listed by sensor with a
  filter, a full scan on FerretDB).

Running it again for the same sensor, model and range replaces its documents.
Reads MONGO_URI and MONGO_DATABASE like the services. Exit codes: 0 done,
2 bad arguments or model, 1 the database could not be read or written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pymongo import ReplaceOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from Models_analysis import adaptive, history
from Models_analysis.model import Forecasts, LoadedModel, ModelError, load_model, score
from pipeline import contract, logs, settings
from pipeline.csv_rows import parse_timestamp
from pipeline.mongo import mongo_client
from pipeline.settings import MongoSettings

logger = logging.getLogger("Models_analysis.rescore")

#: Runs kept in a sensor's ``rescored_models`` document.
RUNS_KEPT = 20
#: Readings forecast per predict call (bounds the memory of a long range).
CHUNK = 5_000
#: Statements per write command: FerretDB 1.24 hangs on more than about 100 (Server/store.py).
MAX_STATEMENTS = 50


def rescored_id(sensor: str, model_hash: str, minute: datetime) -> str:
    """The ``_id`` of one sensor's minute re-scored by one model."""
    return f"{sensor}|{model_hash}|{contract.iso(minute)}"


def accuracy(pairs: Iterable[tuple[float, float, float, float]]) -> dict[str, Any]:
    """n, mae, coverage, anomalies and mean_width of (v, yhat, lower, upper) tuples (None when empty)."""
    n, error, inside, width = 0, 0.0, 0, 0.0
    for v, yhat, lower, upper in pairs:
        n += 1
        error += abs(v - yhat)
        inside += lower <= v <= upper
        width += upper - lower
    if n == 0:
        return {"n": 0, "mae": None, "coverage": None, "anomalies": 0, "mean_width": None}
    return {"n": n, "mae": error / n, "coverage": inside / n, "anomalies": n - inside, "mean_width": width / n}


def rescore(
    db: Database[dict[str, Any]],
    loaded: LoadedModel,
    sensor: str,
    since: datetime,
    until: datetime,
    grid_ms: int = 1000,
    progress: bool = False,
    adaptive_gamma: float = adaptive.DEFAULT_GAMMA,
) -> dict[str, Any]:
    """Re-score and store; returns the run's summary document (as stored in ``rescores``)."""
    started = time.monotonic()
    identity = loaded.identity
    cache = Forecasts(CHUNK * 4)
    # The intervals as the service serves them: one sensor's readings in time order, its level carried along.
    levels, level = adaptive.Levels(adaptive_gamma), adaptive.nominal_level(loaded.model, loaded.metadata)
    pending: list[ReplaceOne[dict[str, Any]]] = []
    ours: list[tuple[float, float, float, float]] = []
    live: list[tuple[float, float, float, float]] = []
    scored = errors = minutes = 0
    batch: list[history.Minute] = []

    def flush_minutes(done: Sequence[history.Minute]) -> None:
        nonlocal scored, errors
        points = sorted((p for m in done for p in m.points), key=lambda p: p.ts)
        scored_now = score(loaded, points, grid_ms, cache) if points else []
        results = {r.id: adaptive.adapt(levels, r, level) for r in scored_now}
        now = datetime.now(UTC)
        for minute in done:
            forecasts = []
            for point in minute.points:
                result = results.get(point.id)
                if not isinstance(result, contract.Prediction):
                    errors += 1
                    continue
                scored += 1
                forecasts.append(
                    {
                        "id": point.id,
                        "ts": point.ts,
                        "v": point.v,
                        "yhat": result.yhat,
                        "yhat_lower": result.yhat_lower,
                        "yhat_upper": result.yhat_upper,
                        "anomaly": result.anomaly,
                    }
                )
                served = minute.forecasts.get(point.id)
                if served is not None:
                    # Compared on the readings both have: the live forecast and ours.
                    ours.append((point.v, result.yhat, result.yhat_lower, result.yhat_upper))
                    live.append((point.v, served["yhat"], served["yhat_lower"], served["yhat_upper"]))
            document = {
                "sensor": sensor,
                "model": identity.model_dump(),
                "minute": minute.start,
                "forecasts": forecasts,
                "rescored_at": now,
            }
            pending.append(ReplaceOne({"_id": rescored_id(sensor, identity.hash, minute.start)}, document, upsert=True))
            if len(pending) >= MAX_STATEMENTS:
                _write(db, pending)

    for minute in history.minutes(db, sensor, since, until):
        minutes += 1
        batch.append(minute)
        if sum(len(m.points) for m in batch) >= CHUNK:
            flush_minutes(batch)
            batch = []
            if progress:
                _say(f"  {minutes} minutes, {scored} readings re-scored ...", sys.stderr)
    if batch:
        flush_minutes(batch)
    _write(db, pending)
    all_ours = accuracy(ours)
    summary = {
        "_id": f"{sensor}|{identity.hash}|{contract.iso(since)}|{contract.iso(until)}",
        "sensor": sensor,
        "model": identity.model_dump(),
        "since": since,
        "until": until,
        "grid_ms": grid_ms,
        "adaptive_gamma": adaptive_gamma,
        "minutes": minutes,
        "readings": scored + errors,
        "scored": scored,
        "errors": errors,
        "compared": {"rescored": all_ours, "live": accuracy(live)},
        "rescored_at": datetime.now(UTC),
        "seconds": time.monotonic() - started,
    }
    db[contract.COLLECTION_RESCORES].replace_one({"_id": summary["_id"]}, summary, upsert=True)
    _list_run(db, summary)
    return summary


def _list_run(db: Database[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Put the run first in its sensor's ``rescored_models`` document, replacing the model's earlier run.

    The whole list is ``$set`` by ``_id`` (FerretDB 1.24 ignores ``$push`` with ``$slice``);
    two runs for one sensor finishing at the same moment may lose one entry, not its data.
    """
    collection = db[contract.COLLECTION_RESCORED_MODELS]
    sensor, model_hash = summary["sensor"], summary["model"]["hash"]
    stored = collection.find_one({"_id": sensor}, {"runs": 1}) or {}
    run = {key: summary[key] for key in ("_id", "model", "since", "until", "minutes", "scored", "compared")}
    run = {**run, "id": run.pop("_id"), "rescored_at": summary["rescored_at"]}
    others = [r for r in stored.get("runs") or [] if (r.get("model") or {}).get("hash") != model_hash]
    collection.update_one(
        {"_id": sensor}, {"$set": {"runs": [run, *others][:RUNS_KEPT], "updated_at": run["rescored_at"]}}, upsert=True
    )


def _write(db: Database[dict[str, Any]], pending: list[ReplaceOne[dict[str, Any]]]) -> None:
    if pending:
        db[contract.COLLECTION_RESCORED].bulk_write(list(pending), ordered=False)
        pending.clear()


def _say(text: str, stream: TextIO = sys.stdout) -> None:
    """One line for the person at the terminal (results on stdout, progress and errors on stderr)."""
    stream.write(text + "\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m Models_analysis.rescore", description=__doc__.split("\n")[0])
    parser.add_argument("--sensor", required=True, help="the sensor whose readings to re-score")
    parser.add_argument("--since", required=True, help="readings at or after this time (ISO 8601; no zone = UTC)")
    parser.add_argument("--until", required=True, help="readings before this time (ISO 8601; no zone = UTC)")
    parser.add_argument("--model", required=True, type=Path, help="the model file (.joblib) to score them with")
    parser.add_argument(
        "--grid-ms", type=int, default=1000, help="forecast each reading at the nearest multiple (0: exact times)"
    )
    parser.add_argument(
        "--adaptive-gamma",
        type=float,
        default=adaptive.DEFAULT_GAMMA,
        help=f"intervals adapt per reading as the service's, MODEL_ADAPTIVE_GAMMA ({adaptive.DEFAULT_GAMMA}; 0: off)",
    )
    args = parser.parse_args(argv)
    logs.setup("WARNING", "rescore")
    if not 0 <= args.adaptive_gamma < 1:
        _say(f"error: --adaptive-gamma must be at least 0 and below 1, not {args.adaptive_gamma}", sys.stderr)
        return 2
    try:
        since, until = parse_timestamp(args.since), parse_timestamp(args.until)
    except ValueError as error:
        _say(f"error: {error}", sys.stderr)
        return 2
    if until <= since:
        _say(f"error: --until {args.until} is not after --since {args.since}", sys.stderr)
        return 2
    try:
        loaded = load_model(args.model)
    except ModelError as error:
        _say(f"error: {error}", sys.stderr)
        return 2
    config = settings.load(MongoSettings)
    client = mongo_client(config, tz_aware=True, appname="rescore")
    try:
        with client:
            summary = rescore(
                client[config.MONGO_DATABASE],
                loaded,
                args.sensor,
                since,
                until,
                args.grid_ms,
                True,
                args.adaptive_gamma,
            )
    except PyMongoError as error:
        _say(f"error: the database: {error}", sys.stderr)
        return 1
    ours, live = summary["compared"]["rescored"], summary["compared"]["live"]
    failed = f", {summary['errors']} could not be scored" if summary["errors"] else ""
    _say(
        f"re-scored {summary['scored']} readings of {args.sensor} in {summary['minutes']} minutes with "
        f"{loaded.identity.name} (hash {loaded.identity.hash}) in {summary['seconds']:.1f}s{failed}"
    )
    _say(f"  on the {ours['n']} readings that have a live forecast too:")
    for label, figures in (("this model", ours), ("served live", live)):
        if figures["n"]:
            _say(
                f"  {label:12} MAE {figures['mae']:.4g}, coverage {100 * figures['coverage']:.1f} %, "
                f"{figures['anomalies']} anomalies"
            )
    _say(f"stored in {contract.COLLECTION_RESCORED} and {contract.COLLECTION_RESCORES} (_id {summary['_id']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
