"""The rows a shard yields, before decoding: ROW_SCHEMA and the builder readers fill."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from .shards import Shard

# The schema of rows a shard yields (before decoding). `payload` holds image bytes or
# UTF-8-or-not text bytes; rows that failed to read carry error_* fields instead.
# `row_index` numbers a shard's rows 0..n-1. `shard_rows` is n on the rows of the shard's
# last table and -1 on the tables before it: a shard is read as a stream, so its row
# count is known only at its end (the committer waits for it).
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
UNKNOWN_ROWS = -1  # shard_rows on the tables of a shard before its last

# (source_uri, source_row) of a row -> why it is rejected: where its id first appears.
Duplicates = Mapping[tuple[str, int], str]

# A table is cut from the rows held once their payloads reach this many bytes (or this
# many rows): a shard of large images is passed on a few images at a time, and one of
# small texts in tables big enough that per-table costs do not show.
TABLE_BYTES = 16 * 1024**2
TABLE_ROWS = 4096


class RowBuilder:
    """Accumulates rows of one shard in ROW_SCHEMA column order, and cuts them into
    tables as they come: `tables` whenever `full`, then `close`."""

    def __init__(self, shard: Shard, duplicates: Duplicates | None = None) -> None:
        self.shard = shard
        self.duplicates = duplicates or {}
        self.rows = 0  # rows added so far, over every table cut
        self._columns = self._empty()
        self._bytes = 0
        self._held: pa.Table | None = None  # the last table cut, yielded once the next one exists

    @staticmethod
    def _empty() -> dict[str, list[Any]]:
        return {name: [] for name in ROW_SCHEMA.names}

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
        c = self._columns
        first = self.duplicates.get((source_uri, source_row))
        if first is not None and error is None:
            payload, error = None, ("read", "duplicate_id", first)
        c["id"].append(id)
        c["shard_key"].append(self.shard.key)
        c["shard_rows"].append(UNKNOWN_ROWS)
        c["row_index"].append(self.rows)
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
        self.rows += 1
        self._bytes += len(payload) if payload else 0

    @property
    def full(self) -> bool:
        """Whether the rows held are worth a table of their own."""
        return self._bytes >= TABLE_BYTES or len(self._columns["id"]) >= TABLE_ROWS

    def tables(self) -> Iterator[pa.Table]:
        """Cut the rows held into a table; yields the table cut before it, if any (the last
        table is held back until `close`, which writes the shard's row count into it)."""
        if not self._columns["id"]:
            return
        table = self._cut()
        if self._held is not None:
            yield self._held
        self._held = table

    def close(self) -> Iterator[pa.Table]:
        """The shard's last table(s), with shard_rows set on the last one's rows."""
        last = self._cut() if self._columns["id"] else None
        if last is None:
            last, self._held = self._held, None
        elif self._held is not None:
            yield self._held
            self._held = None
        if last is not None:
            yield last.set_column(ROW_SCHEMA.get_field_index("shard_rows"), "shard_rows",
                                  pa.array([self.rows] * last.num_rows, pa.int64()))

    def _cut(self) -> pa.Table:
        table = pa.table(self._columns, schema=ROW_SCHEMA)
        self._columns, self._bytes = self._empty(), 0
        return table


def with_shard_rows(table: pa.Table) -> pa.Table:
    """`table` (one whole shard's rows) with its row count on every row."""
    return table.set_column(ROW_SCHEMA.get_field_index("shard_rows"), "shard_rows",
                            pa.array([table.num_rows] * table.num_rows, pa.int64()))
