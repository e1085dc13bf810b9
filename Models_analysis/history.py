"""A sensor's stored readings, and the forecasts served for them, read by ``_id`` only.

The bridge keeps one document per sensor and minute in ``aggregates``
(``_id`` = ``<sensor>|<minute>``, Server/timeline.py) with the minute's
``points`` (id, ts, v) and their ``forecasts``. FerretDB 1.24, the local
stack's MongoDB, answers only an ``_id`` lookup from an index and scans the
whole collection for any other filter, so a sensor's history is read here
minute by minute, by ``_id``; the hourly rollups (``aggregates_hourly``, one
lookup per hour) say which hours hold any reading, so empty hours cost one
lookup, not sixty. The bridge writes an hour's rollup up to 30 s after its
minutes, so the hours of the last :data:`FRESH` are read minute by minute
whatever the rollups say.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from pipeline import contract
from pipeline.periods import COLLECTION, HOUR, MINUTE, forecasts_of, period_id, points_of, starts

#: Hours this recent are read minute by minute even without their rollup (the bridge writes it later).
FRESH = timedelta(minutes=5)


@dataclass
class Minute:
    """One stored minute of a sensor: its readings and the forecasts served live for them, by reading id."""

    start: datetime
    points: list[contract.Reading] = field(default_factory=list)
    forecasts: dict[str, dict[str, Any]] = field(default_factory=dict)


def minutes(db: Database[dict[str, Any]], sensor: str, since: datetime, until: datetime) -> Iterator[Minute]:
    """The sensor's stored minutes overlapping [since, until), oldest first, with the points inside the range."""
    hourly = db[COLLECTION[HOUR]]
    per_minute = db[COLLECTION[MINUTE]]
    fresh = datetime.now(UTC) - FRESH - HOUR
    for hour in starts(since, until, HOUR):
        if hour >= until:
            continue
        if hour < fresh and hourly.find_one({"_id": period_id(sensor, hour)}, {"_id": 1}) is None:
            continue
        for start in starts(max(hour, since), min(hour + HOUR, until), MINUTE):
            if start >= until or start >= hour + HOUR:
                continue
            document = per_minute.find_one({"_id": period_id(sensor, start)}, {"points": 1, "forecasts": 1})
            if document is None:
                continue
            minute = Minute(start)
            for point in points_of(document):
                ts = _utc(point["ts"])
                if since <= ts < until:
                    minute.points.append(contract.Reading(id=point["id"], sensor=sensor, ts=ts, v=point["v"]))
            minute.forecasts = {f["id"]: f for f in forecasts_of(document)}
            if minute.points:
                yield minute


def readings(db: Database[dict[str, Any]], sensor: str, since: datetime, until: datetime) -> list[contract.Reading]:
    """The sensor's stored readings in [since, until), in time order."""
    found = [point for minute in minutes(db, sensor, since, until) for point in minute.points]
    return sorted(found, key=lambda r: (r.ts, r.id))


def sensors(db: Database[dict[str, Any]]) -> dict[str, datetime]:
    """Every sensor the bridge has seen, with the time of its latest reading (one document per sensor)."""
    found = {}
    for document in db[contract.COLLECTION_SENSORS].find({}, {"last": 1}):
        last = document.get("last") or {}
        if isinstance(last.get("ts"), datetime):
            found[str(document["_id"])] = _utc(last["ts"])
    return found


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
