"""``python -m Server.export``: readings or predictions of some sensors over a time range, to CSV or Parquet.

Streams from MongoDB in batches (a cursor, never the whole result in memory)
and writes as it reads, with a progress bar on stderr. Reads MONGO_URI and
MONGO_DATABASE like the bridge. The columns are the contract's, typed:
``id``, ``sensor``, ``ts`` (UTC) and ``v`` for readings (plus ``received_at``
and the sensor's extra fields as one JSON text column, ``extra``);
``id``, ``sensor``, ``ds``, ``yhat``, ``yhat_lower``, ``yhat_upper``, ``v``,
``anomaly``, ``model_name``, ``model_hash`` and ``scored_at`` for predictions.
Parquet (through pyarrow) keeps the types: times as timestamp[ms, UTC],
numbers as float64. Rows come in the order MongoDB returns them (the order
they were stored, which is arrival order), not sorted.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pymongo import MongoClient
from tqdm import tqdm

from pipeline import contract, settings
from pipeline.mongo import mongo_client
from pipeline.settings import MongoSettings

#: Rows read and written at a time: bounds the memory an export takes, whatever its size.
BATCH = 5_000

_TIME = pa.timestamp("ms", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    contract.COLLECTION_READINGS: pa.schema(
        [("id", pa.string()), ("sensor", pa.string()), ("ts", _TIME), ("v", pa.float64())]
        + [("received_at", _TIME), ("extra", pa.string())]
    ),
    contract.COLLECTION_PREDICTIONS: pa.schema(
        [("id", pa.string()), ("sensor", pa.string()), ("ds", _TIME)]
        + [(name, pa.float64()) for name in ("yhat", "yhat_lower", "yhat_upper", "v")]
        + [("anomaly", pa.bool_()), ("model_name", pa.string()), ("model_hash", pa.string()), ("scored_at", _TIME)]
    ),
}
_TIME_FIELD = {contract.COLLECTION_READINGS: "ts", contract.COLLECTION_PREDICTIONS: "ds"}
_READING_FIELDS = {"_id", "sensor", "ts", "v", "received_at"}


def row(collection: str, document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as a row of the export's columns."""
    if collection == contract.COLLECTION_READINGS:
        extra = {k: v for k, v in document.items() if k not in _READING_FIELDS}
        return {
            "id": document["_id"],
            "sensor": document.get("sensor"),
            "ts": document.get("ts"),
            "v": document.get("v"),
            "received_at": document.get("received_at"),
            "extra": orjson.dumps(extra, default=str).decode() if extra else None,
        }
    model = document.get("model") or {}
    return {
        "id": document["_id"],
        **{k: document.get(k) for k in ("sensor", "ds", "yhat", "yhat_lower", "yhat_upper", "v", "anomaly")},
        "model_name": model.get("name"),
        "model_hash": model.get("hash"),
        "scored_at": document.get("scored_at"),
    }


def query(sensors: list[str], since: datetime | None, until: datetime | None, collection: str) -> dict[str, Any]:
    """The MongoDB filter: these sensors (all when none), times in [since, until)."""
    found: dict[str, Any] = {}
    if sensors:
        found["sensor"] = {"$in": sensors}
    bounds = {**({"$gte": since} if since else {}), **({"$lt": until} if until else {})}
    if bounds:
        found[_TIME_FIELD[collection]] = bounds
    return found


def batches(
    client: MongoClient[dict[str, Any]], database: str, collection: str, found: dict[str, Any]
) -> Iterator[list[dict[str, Any]]]:
    """The matching documents as rows, BATCH at a time."""
    cursor = client[database][collection].find(found, batch_size=BATCH)
    chunk: list[dict[str, Any]] = []
    for document in cursor:
        chunk.append(row(collection, document))
        if len(chunk) >= BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def export(
    client: MongoClient[dict[str, Any]],
    database: str,
    collection: str,
    found: dict[str, Any],
    out: Path | None,
    form: Literal["csv", "parquet"],
    progress: bool = True,
) -> int:
    """Write every matching document to ``out`` (None: standard output); returns how many.

    A file is written under a temporary name and renamed when complete, so a
    failed export never leaves a file that looks whole.
    """
    total = client[database][collection].count_documents(found) if progress else None
    with tqdm(total=total, unit=" rows", disable=not progress, file=sys.stderr) as bar:
        if out is None:
            written = _write(sys.stdout.buffer, client, database, collection, found, form, bar)
            sys.stdout.buffer.flush()
            return written
        tmp = out.with_name(f".{out.name}.part")
        with tmp.open("wb") as handle:
            written = _write(handle, client, database, collection, found, form, bar)
        tmp.replace(out)
    return written


def _write(
    handle: BinaryIO,
    client: MongoClient[dict[str, Any]],
    database: str,
    collection: str,
    found: dict[str, Any],
    form: Literal["csv", "parquet"],
    bar: tqdm[Any],
) -> int:
    schema = SCHEMAS[collection]
    written = 0
    if form == "parquet":
        with pq.ParquetWriter(handle, schema) as writer:
            for chunk in batches(client, database, collection, found):
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                written += len(chunk)
                bar.update(len(chunk))
        return written
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
    table = csv.DictWriter(text, fieldnames=schema.names)
    table.writeheader()
    for chunk in batches(client, database, collection, found):
        table.writerows({k: _csv(v) for k, v in r.items()} for r in chunk)
        written += len(chunk)
        bar.update(len(chunk))
    text.detach()  # leave ``handle`` open for its owner
    return written


def _csv(value: Any) -> Any:
    if isinstance(value, datetime):
        return contract.iso(value)
    return value


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (like 2026-11-01 or 2026-11-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, export, say where it went."""
    parser = argparse.ArgumentParser(prog="python -m Server.export", description=__doc__.splitlines()[0])
    parser.add_argument("--sensor", action="append", default=[], help="a sensor id (repeat for more; default: all)")
    parser.add_argument("--since", type=_time, help="from this time, ISO 8601 (no zone = UTC), inclusive")
    parser.add_argument("--until", type=_time, help="to this time, exclusive")
    parser.add_argument(
        "--collection",
        choices=sorted(SCHEMAS),
        default=contract.COLLECTION_READINGS,
        help="what to export (default readings)",
    )
    parser.add_argument("--format", dest="form", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--out", required=True, help="the file to write, or - for standard output")
    args = parser.parse_args(argv)
    config = settings.load(MongoSettings)
    client: MongoClient[dict[str, Any]] = mongo_client(config, tz_aware=True)
    with client:
        found = query(args.sensor, args.since, args.until, args.collection)
        out = None if args.out == "-" else Path(args.out)
        count = export(client, config.MONGO_DATABASE, args.collection, found, out, args.form)
    sys.stderr.write(f"wrote {count} {args.collection} to {out or 'standard output'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
