"""The rows a shard yields, before decoding: ROW_SCHEMA and the builder readers fill."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .shards import Shard

# The schema of rows a shard yields (before decoding). `payload` holds image bytes or
# UTF-8-or-not text bytes; rows that failed to read carry error_* fields instead.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard_key", pa.string()),
        ("shard_rows", pa.int64()),
        ("row_index", pa.int64()),
        ("source_uri", pa.string()),
        ("source_row", pa.int64()),
        ("payload", pa.binary()),
        ("reference", pa.string()),
        ("error_stage", pa.string()),
        ("error_cause", pa.string()),
        ("error_message", pa.string()),
    ]
)


# (source_uri, source_row) of a row -> why it is rejected: where its id first appears.
Duplicates = Mapping[tuple[str, int], str]


class RowBuilder:
    """Accumulates rows of one shard in ROW_SCHEMA column order."""

    def __init__(self, shard: Shard, duplicates: Duplicates | None = None) -> None:
        self.shard = shard
        self.duplicates = duplicates or {}
        self.columns: dict[str, list[Any]] = {name: [] for name in ROW_SCHEMA.names}

    def add(
        self,
        *,
        id: str,
        source_uri: str,
        source_row: int,
        payload: bytes | None = None,
        reference: str | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> None:
        c = self.columns
        first = self.duplicates.get((source_uri, source_row))
        if first is not None and error is None:
            payload, error = None, ("read", "duplicate_id", first)
        c["id"].append(id)
        c["shard_key"].append(self.shard.key)
        c["row_index"].append(len(c["id"]) - 1)
        c["source_uri"].append(source_uri)
        c["source_row"].append(source_row)
        c["payload"].append(payload)
        c["reference"].append(reference)
        # "" (not None) means "no error": an all-null column would not survive Ray Data's
        # numpy batches as strings.
        stage, cause, message = error or ("", "", "")
        c["error_stage"].append(stage)
        c["error_cause"].append(cause)
        c["error_message"].append(message)

    def table(self) -> pa.Table:
        n = len(self.columns["id"])
        self.columns["shard_rows"] = [n] * n
        return pa.table(self.columns, schema=ROW_SCHEMA)
