"""Reading (input, target) pairs with Ray Data, lazily: rows stream into the workers.

Pairs are read by the same reading layer as every generation job (pipelines.reading:
the same shards, ids, formats and column keys, each shard streamed); the
reference text it reads is the target. Every dataset comes out with four columns:
`id` (string), `source` (image bytes or text bytes), `target` (text) and `error`
(the read error's cause, "" for a good row), so a row that cannot be read is counted
by the trainer like any other bad row, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from combiner_core.storage import absolute_uri

from ..reading import (
    FILES_PER_SHARD,
    CaptionsFileError,
    InputListingError,
    Shard,
    count_rows,
    iter_shard,
    list_inputs,
    plan_shards,
    read_captions_file,
)
from .plan import PairsPlan
from .spec import DataSource


class DataSourceError(ValueError):
    """A data source names nothing readable (raised on the driver, before training)."""


def _read(batch: dict[str, np.ndarray], *, options: Any) -> Iterator[pa.Table]:
    """Read task: one shard's pairs, a few MiB at a time (reading.iter_shard)."""
    for description in batch["shard"]:
        for rows in iter_shard(Shard.described(json.loads(description)), options):
            yield pa.table(
                {
                    "id": rows.column("id"),
                    "source": rows.column("payload"),
                    "target": rows.column("reference").cast(pa.string()),
                    "error": rows.column("error_cause"),
                }
            )


def plan_pairs(source: DataSource, *, key: str) -> PairsPlan:
    """One data source's pairs, resolved: shards, reader options, rows if known without reading.

    Raises DataSourceError naming `key` (data.train...) when nothing can be read.
    """
    options = source.pairs_reader()
    options = replace(
        options,
        root=absolute_uri(options.root),
        captions_file=absolute_uri(options.captions_file) if options.captions_file else None,
    )
    try:
        listing = list_inputs(options.root, format=options.format, extensions=options.extensions)
        if options.captions_file:
            read_captions_file(options.captions_file)
    except InputListingError as exc:  # its message names the generation jobs' key, input.uri
        raise DataSourceError(str(exc).replace("input.uri", f"{key}.uri", 1)) from None
    except CaptionsFileError as exc:
        raise DataSourceError(f"{key}: {exc}") from None
    files = listing.files
    if not files:
        raise DataSourceError(f"{key}.uri: no {source.format} files under {source.uri}")
    # The generation jobs' default shards: image files by FILES_PER_SHARD and SHARD_BYTES,
    # large Parquet files by ranges of row groups, so one big file feeds several read tasks.
    shards = plan_shards(files, format=options.format, files_per_shard=FILES_PER_SHARD, sizes=listing.sizes,
                         storage_options=options.storage_options)
    rows = count_rows(files, options)
    if rows is not None and source.max_rows is not None:
        rows = min(rows, source.max_rows)
    return PairsPlan(key=key, shards=tuple(shards), reader=options, rows=rows, max_rows=source.max_rows)


def read_pairs(pairs: PairsPlan) -> Any:
    """A lazy Ray Dataset of {id, source, target, error} for one split's pairs."""
    import ray.data

    # JSON: a shard's description mixes strings, lists and numbers (no one Arrow type).
    items = [{"shard": json.dumps(s.describe())} for s in pairs.shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read, batch_size=1, batch_format="numpy", fn_kwargs={"options": pairs.reader}
    )
    if pairs.max_rows is not None:
        ds = ds.limit(pairs.max_rows)
    return ds
