"""The worker half of the commit protocol: a block of processed rows becomes staged
Parquet files under _staging/<run_id>/<shard_key>/, and one record per shard for the driver.

Only records of finished tasks reach the driver, so files of a killed or retried
attempt are never used (store.py commits what the records name).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..counters import ModelCounters
from .layout import ERROR_SCHEMA, INTERNAL_FIELDS, STAGING_DIR, output_fs, write_parquet

RECORD_SCHEMA = pa.schema(
    [
        ("shard_key", pa.string()),
        ("shard_rows", pa.int64()),  # -1 until a block holds rows of the shard's last table
        ("rows", pa.int64()),
        ("ok_path", pa.string()),
        ("error_path", pa.string()),
        # the rows' ModelCounters as JSON ("" if none)
        ("stats", pa.string()),
    ]
)



def _str_column(table: pa.Table, name: str) -> pa.Array:
    """A string column, or nulls when Ray Data turned an all-None column into floats."""
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    return pa.nulls(table.num_rows, pa.string())


def stage_results(
    block: pa.Table,
    *,
    output_uri: str,
    run_id: str,
    schema: pa.Schema,
    lineage: Mapping[str, str],
    produced_at: datetime,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Split a block of processed rows into ok/error tables per shard and stage them.

    `block` holds the reader's columns, the task's output columns (named in `schema`,
    the output schema) and `model_sha256`; `lineage` gives model_uri, spec_hash and
    params_hash. Returns RECORD_SCHEMA rows, one per shard present in the block.
    """
    fs, root = output_fs(output_uri, storage_options)
    records: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    counters = block.column("model_stats").to_pylist() if "model_stats" in block.column_names else None
    ok_schema = pa.schema(list(schema) + [pa.field(*f) for f in INTERNAL_FIELDS])
    for key in sorted(set(block.column("shard_key").to_pylist())):
        mask = pc.equal(block.column("shard_key"), key)
        part = block.filter(mask)
        failed = pc.not_equal(part.column("error_stage"), "")
        ok, bad = part.filter(pc.invert(failed)), part.filter(failed)
        base = f"{root}/{STAGING_DIR}/{run_id}/{key}/{uuid.uuid4().hex}"
        ok_path = err_path = ""
        if ok.num_rows:
            ok_path = f"{base}-ok.parquet"
            write_parquet(fs, ok_path, _ok_table(ok, ok_schema, lineage, produced_at))
        if bad.num_rows:
            err_path = f"{base}-err.parquet"
            write_parquet(fs, err_path, _error_table(bad, lineage, produced_at))
        stats = ""
        if counters is not None:
            # A batch's counters ride on its first row; a block may hold several batches.
            picked = [v for v, m in zip(counters, mask.to_pylist(), strict=True) if m and v]
            stats = ModelCounters.total(ModelCounters.from_json(v) for v in picked).to_json()
        records["shard_key"].append(key)
        # The shard's row count rides on the rows of its last table only (-1 before it).
        records["shard_rows"].append(pc.max(part.column("shard_rows")).as_py())
        records["rows"].append(part.num_rows)
        records["ok_path"].append(ok_path)
        records["error_path"].append(err_path)
        records["stats"].append(stats)
    return pa.table(records, schema=RECORD_SCHEMA)


def _ok_table(ok: pa.Table, schema: pa.Schema, lineage: Mapping[str, str], produced_at: datetime) -> pa.Table:
    """Output rows: the task's columns, the reference, lineage, and the internal columns."""
    n = ok.num_rows
    constants = {
        "reference": _str_column(ok, "reference"),
        "model_uri": pa.array([lineage["model_uri"]] * n, pa.string()),
        "spec_hash": pa.array([lineage["spec_hash"]] * n, pa.string()),
        "params_hash": pa.array([lineage["params_hash"]] * n, pa.string()),
        "produced_at": pa.array([produced_at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table({f.name: constants[f.name] if f.name in constants else ok.column(f.name) for f in schema}).cast(schema)


def _error_table(bad: pa.Table, lineage: Mapping[str, str], produced_at: datetime) -> pa.Table:
    """Errors-table rows (ERROR_SCHEMA) and the internal columns."""
    n = bad.num_rows
    schema = pa.schema(list(ERROR_SCHEMA) + [pa.field(*f) for f in INTERNAL_FIELDS])
    return pa.table(
        {
            "id": bad.column("id"),
            "source_uri": bad.column("source_uri"),
            "source_row": bad.column("source_row"),
            "stage": bad.column("error_stage"),
            "cause": bad.column("error_cause"),
            "message": bad.column("error_message"),
            "spec_hash": pa.array([lineage["spec_hash"]] * n, pa.string()),
            "produced_at": pa.array([produced_at] * n, pa.timestamp("us", tz="UTC")),
            "row_index": bad.column("row_index"),
            "shard_key": bad.column("shard_key"),
        }
    ).cast(schema)
