"""The models MODEL_PATH names, reloaded when their files change, without a restart.

MODEL_PATH is either one model file (used for every sensor) or a folder of
``<sensor>.joblib`` files plus ``default.joblib`` for every other sensor. The
scorer calls :meth:`ModelRegistry.refresh` between batches: a changed file is
loaded and swapped in, and the switch is logged with both identities; a file
that cannot be loaded is reported once and the model it was meant to replace
keeps serving, so nothing is dropped.

MODEL_TRAINED_PATH, when set, is a folder of ``<sensor>.joblib`` files the
trainer (Models_analysis.trainer) writes: such a model serves its sensor
before MODEL_PATH's. The trainer writes one only for a sensor without a model
of the user's, unless the user opted in (TRAINER_REPLACE_USER_MODELS).
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
#: How a trained model's scope reads in logs and in ``pipeline_model_info``: ``trained:<sensor>``.
TRAINED = "trained:"
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

    def __init__(self, path: Path, check_every_s: float = 2.0, trained: Path | None = None) -> None:
        self.path = path
        self.trained_path = trained
        self.check_every_s = check_every_s
        self.models: dict[str, LoadedModel] = {}
        #: The trainer's per-sensor models (MODEL_TRAINED_PATH), by sensor.
        self.trained: dict[str, LoadedModel] = {}
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

    def _trained_files(self) -> dict[str, Path]:
        if self.trained_path is None or not self.trained_path.is_dir():
            return {}
        return {f.stem: f for f in sorted(self.trained_path.glob(f"*{SUFFIX}")) if f.is_file()}

    def refresh(self, force: bool = False) -> None:
        """Load what changed since the last look (at most every ``check_every_s``)."""
        now = time.monotonic()
        if not force and now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        self._scan(self._files(), self.models, "", removable=self.path.is_dir())
        self._scan(self._trained_files(), self.trained, TRAINED, removable=True)

    def _scan(self, files: dict[str, Path], models: dict[str, LoadedModel], label: str, removable: bool) -> None:
        said = "trained " if label else ""
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
                current = models.get(key)
                keeping = f"; still serving {_describe(current)}" if current else ""
                logger.error("cannot use the model file %s: %s%s", path, error, keeping)
                continue
            old = models.get(key)
            if old is not None and old.identity == loaded.identity:
                continue
            models[key] = loaded
            if old is None:
                logger.info("%smodel for %s: %s from %s", said, _scope(key), _describe(loaded), path)
            else:
                _unexport(label + key, old)
                logger.info(
                    "%smodel for %s switched from %s to %s", said, _scope(key), _describe(old), _describe(loaded)
                )
            MODEL.labels(label + key, loaded.identity.name, loaded.identity.hash).set(1)
        for key in [k for k in models if k not in files]:
            # A removed per-sensor file: that sensor falls back to the next model in line.
            if removable and (label or key != DEFAULT):
                logger.info("%smodel file for sensor %s removed; it uses the next model in line now", said, key)
                _unexport(label + key, models.pop(key))
                folder = self.trained_path if label else self.path
                if folder is not None:
                    self._seen.pop(folder / f"{key}{SUFFIX}", None)

    def for_sensor(self, sensor: str) -> LoadedModel | None:
        """The trainer's model of the sensor, else the sensor's own model, else the default, else None."""
        return self.trained.get(sensor) or self.models.get(sensor) or self.models.get(DEFAULT)

    def in_use(self) -> list[LoadedModel]:
        """Every model loaded now."""
        return [*self.models.values(), *self.trained.values()]


def _unexport(key: str, model: LoadedModel) -> None:
    """Remove the ``pipeline_model_info`` series of ``key``'s former model: one series per model file."""
    with contextlib.suppress(KeyError):
        MODEL.remove(key, model.identity.name, model.identity.hash)


def _scope(key: str) -> str:
    return "every sensor" if key == DEFAULT else f"sensor {key}"


def _describe(model: LoadedModel | None) -> str:
    return "nothing" if model is None else f"{model.identity.name} (hash {model.identity.hash})"
