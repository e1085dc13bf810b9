"""Minutes, hours and days of UTC time, and the ``_id`` of one sensor's period.

The bridge writes, and the page reads, one document per sensor and period
(``aggregates``, ``aggregates_hourly``, ``aggregates_daily``), found by ``_id``
alone: the only lookup FerretDB answers from an index.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pipeline import contract

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
