"""The sensor's settings (environment variables of the same names)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, FilePath

from pipeline import contract
from pipeline.settings import CommonSettings, MqttSettings, hostname

DEMO_CSV = Path(__file__).with_name("demo_data.csv")


class Settings(CommonSettings, MqttSettings):
    """What a sensor reads from its environment."""

    #: The sensor's id, in its topic and its readings; the host name by default,
    #: so `docker compose up --scale sensor=3` gives three ids.
    SENSOR_ID: contract.SensorId = Field(default_factory=hostname)
    #: The CSV to replay. The seed's demo_data.csv (one column of values) is the default.
    SENSOR_CSV: FilePath = DEMO_CSV
    #: Column holding the value; unset = the only column, or the one named "value".
    SENSOR_VALUE_COLUMN: str | None = None
    #: Column holding the time of each row; unset = the time of publishing.
    SENSOR_TIMESTAMP_COLUMN: str | None = None
    #: Seconds between readings (the seed used 10); 0 replays as fast as possible.
    SENSOR_INTERVAL_S: float = Field(1.0, ge=0)
    #: Start again at the first row after the last one.
    SENSOR_LOOP: bool = True
    #: Stop after this many readings (0 = no limit).
    SENSOR_MAX_READINGS: int = Field(0, ge=0)
    #: Readings held while the broker is unreachable (in memory and on disk); when full, reading the CSV waits.
    SENSOR_QUEUE_MAX: int = Field(10_000, ge=1)
    #: Where the sensor keeps, in <SENSOR_ID>.sqlite, the readings the broker has not acknowledged,
    #: so that a sensor killed mid-stream sends them when it starts again (a volume under Compose).
    SENSOR_SPOOL_DIR: Path = Path("spool")
    #: After a reconnect, publish again the readings the broker acknowledged in
    #: the last this-many seconds before the connection was lost: a broker that
    #: crashed may have lost them (Mosquitto saves every second). 0 turns it off. The bridge drops the copies.
    SENSOR_REPLAY_S: float = Field(10.0, ge=0, le=3600)
