"""The page's reads of the bridge's per-period documents: one lookup by ``_id`` each, a few at once, cached.

FerretDB answers ``_id`` equality from its index, but ``$in`` and ranges from a scan,
so a chart of an hour is 61 lookups. :class:`PeriodLookups` sends them PARALLEL_LOOKUPS
at a time and keeps each settled document for a while: a page polling the last hour
every few seconds then reads only the minutes still being written, not the whole hour.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database

from Dashboard.answers import Document
from pipeline import contract, periods

#: A period whose document was last written more than SETTLED ago changes only by a late reading: it is
#: reused for about CACHE_S, and after that while the hour (or day) holding it has not been written, so a late
#: reading shows within about 1.5 CACHE_S (its hour is written within the bridge's 30 s rollup interval); at most
#: CACHE_MAX documents. A page polling the last hour every 3 s then reads two minutes and two hours from MongoDB,
#: not 61 minutes.
SETTLED = timedelta(minutes=2)
CACHE_S = 60.0
CACHE_MAX = 20_000
#: Lookups sent at once (each on a connection of its own): a cold chart of the last hour is 61 of them.
PARALLEL_LOOKUPS = 8
#: Periods looked up before the first of them is answered (a CSV of a month streams a window at a time).
WINDOW = 240

#: The version of the hour (or day) holding a cached period: its ``updated_at``; None for a day.
Version = tuple[str, Any] | None
HOLDER = "holder"
#: The period whose ``updated_at`` says whether a cached minute (or hour) may have changed.
PARENT = {periods.MINUTE: periods.HOUR, periods.HOUR: periods.DAY}


def settled_at() -> datetime:
    """Documents last written before this have settled (SETTLED ago): a late reading is all that changes them."""
    return datetime.now(UTC) - SETTLED


class PeriodLookups:
    """Lookups by ``_id`` in the pipeline's database, sent PARALLEL_LOOKUPS at a time, settled ones cached."""

    def __init__(self, db: Database[Document]) -> None:
        self.db = db
        self.sensor_docs = db[contract.COLLECTION_SENSORS]
        # (collection, _id, projection) -> (monotonic time it expires, document or None, its holder's version).
        self._cache: dict[tuple[str, str, str], tuple[float, Document | None, Version]] = {}
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(PARALLEL_LOOKUPS, thread_name_prefix="lookup")

    def documents(
        self, sensor: str, since: datetime, until: datetime, step: timedelta, projection: Document
    ) -> Iterator[Document]:
        """The stored documents of ``sensor`` for each period of ``step`` in [since, until], oldest first.

        One lookup by ``_id`` per period (a missing period is skipped): FerretDB answers
        ``_id`` equality from its index, but ``$in`` and ranges from a scan. Periods after
        the sensor's latest reading are not looked up; the rest go PARALLEL_LOOKUPS at a
        time, WINDOW periods at once, so a long range streams in bounded memory.
        """
        collection = self.db[periods.COLLECTION[step]]
        settled = settled_at()
        latest = self.sensor_docs.find_one({"_id": sensor}, {"last.ts": 1})
        if latest is not None and "last" in latest:
            until = min(until, latest["last"]["ts"])
        starts = periods.starts(since, until, step)
        for first in range(0, len(starts), WINDOW):
            window = starts[first : first + WINDOW]
            keys = [periods.period_id(sensor, start) for start in window]
            versions: list[Version] = [None] * len(window)
            if step in PARENT:
                versions = self.versions(sensor, window, PARENT[step])
            ends = [start + step for start in window]
            found = self.cached(collection, keys, ends, versions, projection, settled)
            yield from ({**doc, "start": start} for start, doc in zip(window, found, strict=True) if doc is not None)

    def versions(self, sensor: str, starts: list[datetime], parent: timedelta) -> list[Version]:
        """For each period, the version of the period holding it (its hour's or day's ``updated_at``).

        The bridge writes a reading's hour and day with or after its minute, and each write
        sets ``updated_at``: a cached minute whose hour has the version it was cached with
        has not changed since.
        """
        collection = self.db[periods.COLLECTION[parent]]
        holders = sorted({periods.FLOOR[parent](start) for start in starts})
        ids = [periods.period_id(sensor, start) for start in holders]
        docs = self._pool.map(lambda key: collection.find_one({"_id": key}, {"updated_at": 1}), ids)
        # None: the holder has no document yet; one written before updated_at existed has a version too.
        version = {
            start: None if doc is None else ("written", doc.get("updated_at"))
            for start, doc in zip(holders, docs, strict=True)
        }
        return [(HOLDER, version[periods.FLOOR[parent](start)]) for start in starts]

    def cached(
        self,
        collection: Collection[Document],
        keys: list[str],
        ends: list[datetime],
        versions: list[Version],
        projection: Document,
        settled: datetime,
    ) -> list[Document | None]:
        """The documents ``keys`` of ``collection`` (their periods ending at ``ends``), from the cache if there.

        Kept only once settled: written last before ``settled`` (``updated_at``), or, for a
        period with no document, ended before it. A minute still being written (the current
        one, or one a sensor fills late from its spool) is read anew at every poll. A kept
        document is used for about CACHE_S, and after that for as long as the period holding
        it keeps the version it had (``versions``; None: no such period).
        """
        shape = repr(sorted(projection.items()))
        now = time.monotonic()
        found: list[Document | None] = [None] * len(keys)
        missing = []
        with self._cache_lock:
            for i, key in enumerate(keys):
                hit = self._cache.get((collection.name, key, shape))
                if hit is not None and (hit[0] > now or (versions[i] is not None and hit[2] == versions[i])):
                    found[i] = hit[1]
                else:
                    missing.append(i)
        fields = {**projection, "updated_at": 1}
        answers = self._pool.map(lambda i: collection.find_one({"_id": keys[i]}, fields), missing)
        keep = []
        for i, doc in zip(missing, answers, strict=True):
            written = ends[i] if doc is None else doc.pop("updated_at", None) or ends[i]
            found[i] = doc
            # A period with no document whose hour has none either may be one the bridge has just
            # written (its hour follows within the rollup interval): not kept until the hour says.
            unconfirmed = doc is None and versions[i] == (HOLDER, None)
            if written <= settled and not unconfirmed:
                keep.append(((collection.name, keys[i], shape), doc, versions[i]))
        if keep:
            self._keep(keep, now)
        return found

    def _keep(self, entries: list[tuple[tuple[str, str, str], Document | None, Version]], now: float) -> None:
        with self._cache_lock:
            if len(self._cache) + len(entries) > CACHE_MAX:
                expired = [k for k, (until, _, _) in self._cache.items() if until <= now]
                for old in expired or list(self._cache)[: max(len(entries), CACHE_MAX // 10)]:
                    del self._cache[old]
            for entry, doc, version in entries:
                # Each kept between half and one and a half CACHE_S, so the minutes of a chart cached
                # together are read again a few at a time, not all in one poll.
                self._cache[entry] = (now + CACHE_S * random.uniform(0.5, 1.5), doc, version)  # noqa: S311
