"""Minutes, hours and days of UTC time, the ``_id`` of one sensor's period, and a minute's points.

The bridge writes, and the page reads, one document per sensor and period
(``aggregates``, ``aggregates_hourly``, ``aggregates_daily``), found by ``_id``
alone: the only lookup FerretDB answers from an index.

A minute's ``points`` and ``forecasts`` are lists of chunks, one per write: each
a JSON array of rows (``[id, ts in epoch milliseconds, v]`` and ``[id, yhat,
yhat_lower, yhat_upper, anomaly]``). FerretDB decodes every field of a document
it reads, so a minute of 60 points as sub-documents took 4.3-4.8 ms to look up
and as 30 chunks 1.1-1.7 ms (one run, ``bench/storage.py`` notes). Older minutes
that hold sub-documents (``{id, ts, v}``) are read the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline import contract

logger = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

#: The start of the minute, hour or day a moment falls in (UTC).
FLOOR: dict[timedelta, Callable[[datetime], datetime]] = {
    MINUTE: lambda t: t.astimezone(UTC).replace(second=0, microsecond=0),
    HOUR: lambda t: t.astimezone(UTC).replace(minute=0, second=0, microsecond=0),
    DAY: lambda t: t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
}

#: Where each period's documents are kept.
COLLECTION = {
    MINUTE: contract.COLLECTION_AGGREGATES,
    HOUR: contract.COLLECTION_AGGREGATES_HOURLY,
    DAY: contract.COLLECTION_AGGREGATES_DAILY,
}


def period_id(sensor: str, start: datetime) -> str:
    """The ``_id`` of one sensor's minute, hour or day starting at ``start``: ``<sensor>|<ISO start>``."""
    return f"{sensor}|{contract.iso(start)}"


class PeriodIds:
    """The ``_id`` of a sensor's minute, and its hour's and day's (collection, ``_id``) with their starts.

    Kept ready for the last ``size`` (sensor, minute) pairs asked (all forgotten
    at once past it), since a sensor's readings fall in the same few minutes:
    formatting them for each reading was a third of the bridge timeline's time.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: dict[tuple[str, datetime], tuple[str, tuple[tuple[tuple[str, str], datetime], ...]]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def of(self, sensor: str, minute: datetime) -> tuple[str, tuple[tuple[tuple[str, str], datetime], ...]]:
        """``minute``'s ``_id`` and ((collection, ``_id``), start) of its hour and its day."""
        ids = self._ids.get((sensor, minute))
        if ids is None:
            if len(self._ids) >= self.size:
                self._ids.clear()
            rollups = tuple(
                ((COLLECTION[step], period_id(sensor, begins)), begins)
                for step in (HOUR, DAY)
                for begins in (FLOOR[step](minute),)
            )
            ids = self._ids[(sensor, minute)] = (period_id(sensor, minute), rollups)
        return ids


def starts(since: datetime, until: datetime, step: timedelta) -> list[datetime]:
    """The start of every period of length ``step`` that overlaps [since, until], oldest first."""
    start = FLOOR[step](since)
    found = []
    while start <= until:
        found.append(start)
        start += step
    return found


def epoch_minute(moment: datetime) -> int:
    """Whole minutes since 1970 (UTC)."""
    return int(moment.timestamp() // 60)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
#: The fields of a forecast row, in order.
FORECAST_FIELDS = ("id", "yhat", "yhat_lower", "yhat_upper", "anomaly")


def pack_points(points: Iterable[tuple[str, datetime, float]]) -> str:
    """One chunk of a minute's ``points``: ``(id, ts, v)`` rows, ``ts`` kept to the millisecond as BSON keeps it."""
    return orjson.dumps([[id_, (ts - EPOCH) // MILLISECOND, v] for id_, ts, v in points]).decode()


def pack_forecasts(forecasts: Iterable[dict[str, Any]]) -> str:
    """One chunk of a minute's ``forecasts``: each a row of :data:`FORECAST_FIELDS`."""
    return orjson.dumps([[f[name] for name in FORECAST_FIELDS] for f in forecasts]).decode()


def points_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A minute document's points as ``{id, ts, v}``, in the order they were written.

    A chunk that is not what :func:`pack_points` writes (a document edited by hand, say) is
    left out and logged with the document's ``_id``: the page shows the rest.
    """
    found: list[dict[str, Any]] = []
    for chunk in document.get("points") or []:
        try:
            if isinstance(chunk, dict):
                ts = chunk["ts"]
                found.append(
                    {"id": chunk["id"], "ts": ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts, "v": chunk["v"]}
                )
                continue
            found += [
                {"id": str(i), "ts": EPOCH + int(ms) * MILLISECOND, "v": float(v)} for i, ms, v in _rows(chunk, 3)
            ]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            _skipped(document, "points", chunk, error)
    return found


def forecasts_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A minute document's forecasts as ``{id, yhat, yhat_lower, yhat_upper, anomaly}``, in the order written.

    A chunk that is not what :func:`pack_forecasts` writes is left out and logged, as in :func:`points_of`.
    """
    found: list[dict[str, Any]] = []
    for chunk in document.get("forecasts") or []:
        try:
            if isinstance(chunk, dict):
                found.append({name: chunk.get(name) for name in FORECAST_FIELDS})
                continue
            found += [dict(zip(FORECAST_FIELDS, row, strict=True)) for row in _rows(chunk, len(FORECAST_FIELDS))]
        except (TypeError, ValueError) as error:
            _skipped(document, "forecasts", chunk, error)
    return found


def _rows(chunk: Any, width: int) -> list[list[Any]]:
    """The rows of one packed chunk, each a list of ``width`` values; ValueError if it is anything else."""
    rows = orjson.loads(chunk)  # orjson.JSONDecodeError is a ValueError; a non-str is a TypeError
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == width for row in rows):
        raise ValueError(f"not a list of rows of {width} values")
    return rows


def _skipped(document: dict[str, Any], field: str, chunk: Any, error: Exception) -> None:
    logger.warning("%s %s: a chunk left out (%s): %.80r", document.get("_id"), field, error, chunk)


@dataclass
class Totals:
    """Count, sum, min and max of one period's readings (a minute's, or an hour's made of its minutes')."""

    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def merge(self, other: Totals) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def update(self) -> dict[str, Any]:
        """The update operators that add these totals to a stored document."""
        return {
            "$inc": {"count": self.count, "sum": self.total},
            "$min": {"min": self.low},
            "$max": {"max": self.high},
        }
