"""Rows of a CSV as (timestamp or None, value) pairs, with errors that name the line."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)


class CsvError(ValueError):
    """The CSV cannot be used as configured; the message says which column or line."""


@dataclass(frozen=True)
class Row:
    """One usable row: its line number in the file, its time (if the file has one) and value."""

    line: int
    ts: datetime | None
    value: float


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 (a space or T between date and time); no zone means UTC."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def read_rows(
    path: Path, value_column: str | None = None, timestamp_column: str | None = None, strict: bool = False
) -> list[Row]:
    """Read every usable row of ``path``.

    A file with one column may have no header (the seed's demo_data.csv form).
    Otherwise the value column is ``value_column``, else the only column, else
    the one named "value". Rows whose value is not a finite number, or whose
    time does not parse, are skipped with a warning naming the line; with
    ``strict`` (training) the first such row is an error instead.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        records = [r for r in csv.reader(handle) if r and any(cell.strip() for cell in r)]
    if not records:
        raise CsvError(f"{path}: the file has no rows")
    first = [cell.strip() for cell in records[0]]
    if len(first) == 1 and _is_number(first[0]) and value_column is None and timestamp_column is None:
        header, body, first_line = ["value"], records, 1
    else:
        header, body, first_line = first, records[1:], 2
    ts_index = _column(path, header, timestamp_column, None) if timestamp_column else None
    if value_column is None and ts_index is not None and len(header) == 2:
        value_column = header[1 - ts_index]  # a time column and one other: that is the value
    value_index = _column(path, header, value_column, "value")

    rows: list[Row] = []
    for offset, record in enumerate(body):
        line = first_line + offset
        try:
            value = float(record[value_index])
            if not math.isfinite(value):
                raise ValueError
        except (ValueError, IndexError):
            cell = record[value_index] if value_index < len(record) else ""
            if strict:
                raise CsvError(
                    f"{path} line {line}: value {cell!r} in column {header[value_index]!r} is not a finite number"
                ) from None
            logger.warning(
                "%s line %d: value %r in column %r is not a finite number; row skipped",
                path,
                line,
                cell,
                header[value_index],
            )
            continue
        ts = None
        if ts_index is not None:
            cell = record[ts_index] if ts_index < len(record) else ""
            try:
                ts = parse_timestamp(cell)
            except ValueError:
                if strict:
                    raise CsvError(
                        f"{path} line {line}: time {cell!r} in column {header[ts_index]!r} is not ISO 8601"
                    ) from None
                logger.warning(
                    "%s line %d: time %r in column %r is not ISO 8601; row skipped", path, line, cell, header[ts_index]
                )
                continue
        rows.append(Row(line, ts, value))
    if not rows:
        raise CsvError(f"{path}: no row has a usable value in column {header[value_index]!r}")
    return rows


def _column(path: Path, header: list[str], wanted: str | None, fallback: str | None) -> int:
    if wanted is not None:
        if wanted not in header:
            raise CsvError(f"{path}: no column {wanted!r}; the columns are {header}")
        return header.index(wanted)
    if len(header) == 1:
        return 0
    if fallback is not None and fallback in header:
        return header.index(fallback)
    raise CsvError(
        f"{path}: {len(header)} columns {header}; "
        "name the one holding the values (SENSOR_VALUE_COLUMN, or --value-column)"
    )


def replay(rows: list[Row], loop: bool) -> Iterator[Row]:
    """The rows in order, forever when ``loop``.

    When the rows carry times, each pass is shifted forward by the span of the
    file (plus one step) so a looped replay keeps moving forward in time.
    """
    shift = timedelta(0)
    span = _span(rows)
    while True:
        for row in rows:
            yield row if row.ts is None or not shift else Row(row.line, row.ts + shift, row.value)
        if not loop:
            return
        shift += span


def _span(rows: list[Row]) -> timedelta:
    times = [r.ts for r in rows if r.ts is not None]
    if len(times) < 2:
        return timedelta(seconds=1)
    step = (times[-1] - times[0]) / (len(times) - 1)
    return times[-1] - times[0] + step
