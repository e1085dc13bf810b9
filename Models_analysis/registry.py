"""The models MODEL_PATH names, reloaded when their files change, without a restart.

MODEL_PATH is either one model file (used for every sensor) or a folder of
``<sensor>.joblib`` files plus ``default.joblib`` for every other sensor. The
scorer calls :meth:`ModelRegistry.refresh` between batches: a changed file is
loaded and swapped in, and the switch is logged with both identities; a file
that cannot be loaded is reported once and the model it was meant to replace
keeps serving, so nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from Models_analysis.metrics import MODEL
from Models_analysis.model import LoadedModel, ModelError, load_model

logger = logging.getLogger(__name__)

DEFAULT = "default"
SUFFIX = ".joblib"


@dataclass(frozen=True)
class Stamp:
    """What identifies a version of a file without reading it."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stamp:
        stat = path.stat()
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ModelRegistry:
    """Which model scores which sensor."""

    def __init__(self, path: Path, check_every_s: float = 2.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self.models: dict[str, LoadedModel] = {}
        self._seen: dict[Path, Stamp] = {}
        self._last_check = 0.0
        self.refresh(force=True)
        if not self.models:
            raise ModelError(
                f"{path}: no usable model (a .joblib file, or a folder with default.joblib or <sensor>.joblib)"
            )

    def _files(self) -> dict[str, Path]:
        if self.path.is_dir():
            return {f.stem: f for f in sorted(self.path.glob(f"*{SUFFIX}")) if f.is_file()}
        if self.path.is_file():
            return {DEFAULT: self.path}
        return {}

    def refresh(self, force: bool = False) -> None:
        """Load what changed since the last look (at most every ``check_every_s``)."""
        now = time.monotonic()
        if not force and now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        files = self._files()
        for key, path in files.items():
            try:
                stamp = Stamp.of(path)
            except OSError:
                continue  # replaced or removed while we looked: next time
            if self._seen.get(path) == stamp:
                continue
            self._seen[path] = stamp
            try:
                loaded = load_model(path)
            except ModelError as error:
                current = self.models.get(key)
                keeping = f"; still serving {_describe(current)}" if current else ""
                logger.error("cannot use the model file %s: %s%s", path, error, keeping)
                continue
            old = self.models.get(key)
            if old is not None and old.identity == loaded.identity:
                continue
            self.models[key] = loaded
            if old is None:
                logger.info("model for %s: %s from %s", _scope(key), _describe(loaded), path)
            else:
                _unexport(key, old)
                logger.info("model for %s switched from %s to %s", _scope(key), _describe(old), _describe(loaded))
            MODEL.labels(key, loaded.identity.name, loaded.identity.hash).set(1)
        for key in [k for k in self.models if k not in files]:
            # A removed per-sensor file: that sensor falls back to the default.
            if self.path.is_dir() and key != DEFAULT:
                logger.info("model file for sensor %s removed; it uses the default model now", key)
                _unexport(key, self.models.pop(key))

    def for_sensor(self, sensor: str) -> LoadedModel | None:
        """The sensor's own model, else the default, else None."""
        return self.models.get(sensor) or self.models.get(DEFAULT)


def _unexport(key: str, model: LoadedModel) -> None:
    """Remove the ``pipeline_model_info`` series of ``key``'s former model: one series per model file."""
    with contextlib.suppress(KeyError):
        MODEL.remove(key, model.identity.name, model.identity.hash)


def _scope(key: str) -> str:
    return "every sensor" if key == DEFAULT else f"sensor {key}"


def _describe(model: LoadedModel | None) -> str:
    return "nothing" if model is None else f"{model.identity.name} (hash {model.identity.hash})"
