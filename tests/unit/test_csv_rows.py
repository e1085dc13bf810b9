"""Reading sensors' CSV files: the seed's one-column form and time+value files."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.csv_rows import CsvError, read_rows, replay

DEMO = Path(__file__).resolve().parents[2] / "Data_collection" / "demo_data.csv"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_demo_data_is_one_column_of_values() -> None:
    rows = read_rows(DEMO)
    assert len(rows) == 7 * 24 * 60
    assert all(r.ts is None for r in rows)
    assert rows[0].line == 2


def test_headerless_single_column(tmp_path: Path) -> None:
    rows = read_rows(write(tmp_path, "1.5\n2\n3.25\n"))
    assert [r.value for r in rows] == [1.5, 2.0, 3.25]
    assert [r.line for r in rows] == [1, 2, 3]


def test_time_and_value_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "when,count,other\n2026-01-01 00:00:00,5,x\n2026-01-01T00:01:00+01:00,6,y\n")
    rows = read_rows(path, value_column="count", timestamp_column="when")
    assert [r.value for r in rows] == [5.0, 6.0]
    assert rows[0].ts == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows[1].ts == datetime(2025, 12, 31, 23, 1, tzinfo=UTC)


def test_bad_rows_are_skipped_with_their_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "value\n1\nabc\nnan\n4\n")
    with caplog.at_level(logging.WARNING):
        rows = read_rows(path)
    assert [r.value for r in rows] == [1.0, 4.0]
    assert "line 3: value 'abc'" in caplog.text and "line 4" in caplog.text


def test_missing_column_names_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(CsvError, match=r"no column 'c'; the columns are \['a', 'b'\]"):
        read_rows(path, value_column="c")
    with pytest.raises(CsvError, match="SENSOR_VALUE_COLUMN"):
        read_rows(path)


def test_no_usable_rows(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="no rows"):
        read_rows(write(tmp_path, ""))
    with pytest.raises(CsvError, match="no row has a usable value"):
        read_rows(write(tmp_path, "value\nx\n"))


def test_replay_loops_and_moves_time_forward(tmp_path: Path) -> None:
    path = write(tmp_path, "t,v\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,2\n")
    rows = read_rows(path, timestamp_column="t")
    it = replay(rows, loop=True)
    got = [next(it) for _ in range(4)]
    assert [r.value for r in got] == [1, 2, 1, 2]
    assert got[2].ts is not None and got[0].ts is not None
    assert got[2].ts - got[0].ts == timedelta(minutes=2)
    assert list(replay(rows, loop=False)) == rows
