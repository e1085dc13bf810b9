"""The sensor's disk spool: ordered, bounded, and still there after the process that wrote it is gone."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from Data_collection.publisher import Publisher
from Data_collection.settings import Settings
from Data_collection.spool import Spool
from pipeline import contract

operations = st.lists(st.tuples(st.sampled_from(["add", "remove", "reopen"]), st.binary(min_size=1, max_size=8)))


@given(operations, st.integers(1, 5))
def test_the_spool_is_an_ordered_set_that_survives_reopening(ops: list[tuple[str, bytes]], limit: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep" / "s.sqlite"
        spool = Spool(path, limit)
        model: list[bytes] = []
        for op, payload in ops:
            if op == "add":
                spool.add(payload)
                if payload not in model:
                    model.append(payload)
            elif op == "remove":
                spool.remove(payload)
                if payload in model:
                    model.remove(payload)
            else:  # a new process opens the same file
                spool.close()
                spool = Spool(path, limit)
            assert spool.pending() == model
            assert len(spool) == len(model)
            assert spool.full == (len(model) >= limit)
        spool.close()


def test_what_is_added_is_on_disk_before_add_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 10)
    spool.add(b"one")
    # Read by another connection, as the next run of the sensor would, without closing the first.
    other = Spool(tmp_path / "s.sqlite", 10)
    assert other.pending() == [b"one"]
    other.close()
    spool.close()


def test_a_spool_that_cannot_be_written_makes_the_sensor_wait_and_say_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk must pause the sensor (as a full queue does), not crash it and not send unspooled readings."""
    settings = Settings.model_validate(
        {"SENSOR_ID": "s-1", "SENSOR_SPOOL_DIR": str(tmp_path), "MQTT_USERNAME": "u", "MQTT_PASSWORD": "p"}
    )
    publisher = Publisher(settings)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    reading = contract.Reading(id="r1", sensor="s-1", ts=datetime.now(UTC), v=1.0)
    try:
        with mock.patch.object(
            publisher.spool, "add", side_effect=sqlite3.OperationalError("database or disk is full")
        ):
            assert publisher.publish(reading, stop) is False, "it waits until stopped"
        assert publisher.published == 0, "nothing leaves that is not on disk"
        assert "the spool cannot be written (database or disk is full)" in caplog.text
    finally:
        publisher.close()
