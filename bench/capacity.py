"""The capacity arithmetic of docs/capacity.md: instances and cores for a fleet, from measured rates and CPU.

Pure functions of the figures :mod:`bench.scale` measures; an extrapolation from
this machine, which the tables and the plan say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


#: Sensors at one reading a second each that the capacity table plans for.
FLEETS = (10_000, 100_000)

#: Run an instance at no more than this share of the throughput measured for it (headroom for bursts,
#: catching up after an outage, and a replica lost).
UTILISATION = 0.5

#: Parts that use at most one core an instance: the bridge and the model service (one Python process each;
#: the GIL) and Mosquitto 2.0 (one thread).
SINGLE_CORE = ("bridge", "model service", "Mosquitto")


def ratio(two: float, one: float) -> float:
    """How many times ``one``'s rate ``two`` reached (NaN when ``one`` is not a positive number)."""
    return two / one if one > 0 else float("nan")


def cpu_ms_per_reading(cores: float, wall_s: float, readings: float) -> float:
    """CPU milliseconds per reading from a part's mean cores over ``wall_s`` seconds that handled ``readings``."""
    return 1000.0 * cores * wall_s / readings if readings > 0 else float("nan")


def instances_needed(load_per_s: float, per_instance_per_s: float, utilisation: float = UTILISATION) -> int:
    """The fewest instances that carry ``load_per_s`` with none above ``utilisation`` of its throughput.

    At least one. A load that is, within rounding, an exact multiple needs no extra instance.
    """
    if per_instance_per_s <= 0 or not 0 < utilisation <= 1:
        raise ValueError("per-instance throughput must be positive and utilisation in (0, 1]")
    return max(1, math.ceil(load_per_s / (per_instance_per_s * utilisation) - 1e-9))


def cores_needed(load_per_s: float, cpu_ms: float) -> float:
    """Cores a part uses at ``load_per_s`` readings/s when each costs ``cpu_ms`` CPU milliseconds."""
    return load_per_s * cpu_ms / 1000.0


def capacity_plan(
    cpu_ms: Mapping[str, float],
    per_instance: Mapping[str, float],
    single_core: tuple[str, ...] = SINGLE_CORE,
    fleets: tuple[int, ...] = FLEETS,
) -> list[dict[str, Any]]:
    """For each fleet (sensors at 1 reading/s): the cores of every part, and instances of the one-core parts.

    ``cpu_ms``: CPU ms per reading of each part; a part in ``single_core`` (one
    Python process, or Mosquitto's one thread) gets instances of one core each,
    every one at most UTILISATION busy. ``per_instance``: readings/s one instance
    reached alone on this machine, the same count from throughput instead of CPU.
    """
    rows = []
    for sensors in fleets:
        load = float(sensors)
        rows.append(
            {
                "sensors": sensors,
                "readings_per_s": load,
                "cores": {part: cores_needed(load, ms) for part, ms in cpu_ms.items()},
                "instances_by_cpu": {
                    part: instances_needed(load, 1000.0 / cpu_ms[part])
                    for part in single_core
                    if cpu_ms.get(part, 0) > 0
                },
                "instances_by_rate": {part: instances_needed(load, rate) for part, rate in per_instance.items()},
            }
        )
    return rows
