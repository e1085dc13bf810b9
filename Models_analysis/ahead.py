"""Forecast ahead, score by lookup: a grid of forecasts per model, made before the readings arrive.

For each model in use the service keeps a *grid*: the model's forecast at every
MODEL_TIME_GRID_MS step from a little before the newest reading it has scored
to MODEL_FORECAST_AHEAD steps after it, made by one ``predict`` call. Scoring a
reading is then a lookup of its nearest grid time (the same time a direct
``predict`` would use, :func:`Models_analysis.model.grid_point`) plus the
anomaly check: no ``predict`` on the scoring path.

- **Refresh before it runs out.** Once a model's newest reading has used up
  half of the grid ahead of it, a new grid, anchored at that reading, is made
  in a background thread (one at a time, at a lower CPU priority than the
  scoring thread) while the old one keeps serving.
- **Made at once when there is none.** The first reading of a model (after a
  start or a swap), or one past the end of its grid (the stream paused longer
  than the grid reaches), has its model's grid made in the scoring batch:
  one ``predict`` of about as many rows costs about what a one-row one does.
- **Outside the grid: a direct predict.** A reading before the grid's start
  (late, or replayed history) or one far in the future (more than the grid's
  horizon past the wall clock: it must not drag the grid away from the live
  stream) is forecast by a direct ``predict`` at its grid time, through the
  forecast cache.

Grids are kept by model hash, so a swapped model gets its own grid at its first
reading and the old one is dropped when its model is no longer served. One
model's ``predict`` is never called from two threads at once (:meth:`Grids.lock`):
a model of the user's may keep state between calls.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from Models_analysis import metrics
from Models_analysis.model import LoadedModel, Row, forecast, rows_of

logger = logging.getLogger(__name__)

#: The grid starts this share of its horizon before the reading it is anchored at (late readings).
BEHIND_SHARE = 0.1
#: A background refresh starts once the newest reading is past this share of the grid ahead of its anchor.
REFRESH_SHARE = 0.5
#: How much lower the refresh thread's CPU priority is than the scoring thread's (Linux nice increment).
REFRESH_NICE = 10
#: A model whose grid could not be made is predicted directly for this long before a grid is tried again.
RETRY_AFTER_S = 60.0


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True)
class Grid:
    """A model's forecasts at ``start_ms + k * step_ms`` for k in range(len(rows)); rows are (yhat, lower, upper)."""

    model_hash: str
    start_ms: int
    step_ms: int
    anchor_ms: int
    rows: np.ndarray

    @property
    def end_ms(self) -> int:
        """The last grid time (epoch milliseconds)."""
        return self.start_ms + (len(self.rows) - 1) * self.step_ms

    @property
    def refresh_ms(self) -> int:
        """Past this reading time a fresh grid is made in the background."""
        return self.anchor_ms + math.ceil((self.end_ms - self.anchor_ms) * REFRESH_SHARE)

    def times(self) -> list[datetime]:
        """Every grid time."""
        return [_at(self.start_ms + k * self.step_ms) for k in range(len(self.rows))]

    def index(self, moment: datetime) -> int | None:
        """The row of ``moment``'s nearest grid time, or None when that time is outside the grid."""
        point = round(moment.timestamp() * 1000 / self.step_ms)  # as grid_point rounds
        k = point - self.start_ms // self.step_ms
        return k if 0 <= k < len(self.rows) else None

    def lookup(self, moment: datetime) -> Row | None:
        """The forecast at ``moment``'s nearest grid time, or None outside the grid."""
        k = self.index(moment)
        if k is None:
            return None
        yhat, lower, upper = self.rows[k]
        return float(yhat), float(lower), float(upper)


def grid_times(anchor: datetime, step_ms: int, ahead: int) -> tuple[int, list[datetime]]:
    """The start (epoch ms) and times of a grid anchored at ``anchor``: a tenth of it behind, ``ahead`` steps after."""
    anchor_point = round(anchor.timestamp() * 1000 / step_ms)
    behind = max(1, math.ceil(ahead * BEHIND_SHARE))
    first = anchor_point - behind
    return first * step_ms, [_at((first + k) * step_ms) for k in range(behind + ahead + 1)]


def make_grid(loaded: LoadedModel, anchor: datetime, step_ms: int, ahead: int) -> Grid:
    """One ``predict`` of the grid anchored at ``anchor``; raises what the model raises."""
    start_ms, times = grid_times(anchor, step_ms, ahead)
    table = rows_of(forecast(loaded.model, times), times)
    rows = np.array([table[t] for t in times], dtype=float)
    return Grid(loaded.identity.hash, start_ms, step_ms, round(anchor.timestamp() * 1000 / step_ms) * step_ms, rows)


class Grids:
    """The grid of every model in use, and the background thread that refreshes them.

    ``make`` is how a grid is made (:func:`make_grid`; tests pass their own).
    Grid reads and swaps are single dictionary operations, so the scoring
    thread never waits for a refresh.
    """

    def __init__(
        self,
        step_ms: int,
        ahead: int,
        make: Callable[[LoadedModel, datetime, int, int], Grid] = make_grid,
    ) -> None:
        self.step_ms = step_ms
        self.ahead = ahead
        self.make = make
        self._grids: dict[str, Grid] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._models: dict[str, threading.Lock] = {}
        self._failed: dict[str, float] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="forecast-ahead", initializer=_lower_priority
        )

    @property
    def enabled(self) -> bool:
        """Grids need a time grid and a horizon (MODEL_TIME_GRID_MS and MODEL_FORECAST_AHEAD above 0)."""
        return self.step_ms > 0 and self.ahead > 0

    @property
    def horizon(self) -> timedelta:
        """How far a grid reaches ahead of its anchor."""
        return timedelta(milliseconds=self.step_ms * self.ahead)

    def lock(self, model_hash: str) -> threading.Lock:
        """Held around every ``predict`` of one model: the refresh thread's and the scoring path's."""
        with self._lock:
            return self._models.setdefault(model_hash, threading.Lock())

    def get(self, model_hash: str) -> Grid | None:
        """The current grid of a model, if any."""
        return self._grids.get(model_hash)

    def build(self, loaded: LoadedModel, anchor: datetime) -> Grid:
        """Make and keep a model's grid now (the caller's thread)."""
        with self.lock(loaded.identity.hash):
            grid = self.make(loaded, anchor, self.step_ms, self.ahead)
        self._grids[loaded.identity.hash] = grid
        metrics.GRIDS_MADE.labels("now").inc()
        return grid

    def failed(self, model_hash: str) -> None:
        """A grid of this model could not be made: its readings are predicted directly for RETRY_AFTER_S."""
        self._failed[model_hash] = time.monotonic()

    def may_build(self, model_hash: str) -> bool:
        """Whether a grid of this model may be tried now (none failed in the last RETRY_AFTER_S)."""
        failed = self._failed.get(model_hash)
        return failed is None or time.monotonic() - failed >= RETRY_AFTER_S

    def refresh_later(self, loaded: LoadedModel, anchor: datetime) -> concurrent.futures.Future[None] | None:
        """Make a model's next grid in the background, unless one is already being made."""
        key = loaded.identity.hash
        with self._lock:
            if key in self._pending:
                return None
            self._pending.add(key)
        return self._pool.submit(self._refresh, loaded, anchor)

    def _refresh(self, loaded: LoadedModel, anchor: datetime) -> None:
        key = loaded.identity.hash
        try:
            with self.lock(key):
                grid = self.make(loaded, anchor, self.step_ms, self.ahead)
            if key in self._grids:  # not dropped (model replaced) meanwhile
                self._grids[key] = grid
                metrics.GRIDS_MADE.labels("ahead").inc()
        except Exception:  # noqa: BLE001 - the old grid serves; the next batch past it makes one at once
            logger.exception("could not refresh the forecasts ahead of model %s", loaded.identity.name)
        finally:
            with self._lock:
                self._pending.discard(key)

    def keep_only(self, hashes: Iterable[str]) -> None:
        """Drop the grids of models no longer served."""
        wanted = set(hashes)
        for key in [k for k in self._grids if k not in wanted]:
            self._grids.pop(key, None)
        with self._lock:
            for key in [k for k in self._models if k not in wanted]:
                self._models.pop(key, None)

    def __len__(self) -> int:
        return len(self._grids)

    def close(self) -> None:
        """Stop refreshing (a refresh under way finishes in its thread)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority() -> None:
    # Linux gives each thread its own nice value: refreshes yield the CPU to the scoring thread.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFRESH_NICE)
    except (OSError, AttributeError):
        logger.debug("could not lower the refresh thread's priority")


@dataclass(frozen=True)
class Plan:
    """What a batch of one model needs: a grid made now (its anchor), a refresh in the background, or neither."""

    build_at: datetime | None
    refresh_at: datetime | None


def plan(grid: Grid | None, times: Sequence[datetime], now: datetime, horizon: timedelta) -> Plan:
    """Decide, from a model's grid and a batch's reading times, whether to make a grid now or refresh it.

    The anchor is the newest reading that is not far in the future (more than
    ``horizon`` past ``now``): such a reading is forecast directly instead.
    """
    usable = [t for t in times if t <= now + horizon]
    if not usable:
        return Plan(None, None)
    newest = max(usable)
    newest_ms = _ms(newest)
    if grid is None or newest_ms > grid.end_ms:
        return Plan(newest, None)
    if newest_ms > grid.refresh_ms:
        return Plan(None, newest)
    return Plan(None, None)
