"""Reading (input, target) pairs with Ray Data, lazily: rows stream into the workers.

Pairs are read by the same reading layer as every generation job (pipelines.reading:
one shard per file or group of images, the same ids, formats and column keys); the
reference text it reads is the target. Every dataset comes out with four columns:
`id` (string), `source` (image bytes or text bytes), `target` (text) and `error`
(the read error's cause, "" for a good row), so a row that cannot be read is counted
by the trainer like any other bad row, never dropped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from combiner_core.storage import absolute_uri

from ..reading import (
    CaptionsFileError,
    InputListingError,
    Shard,
    count_rows,
    list_input_files,
    plan_shards,
    read_captions_file,
    read_shard,
)
from .plan import PairsPlan
from .spec import DataSource

# Image files per shard (one read task): enough to amortize a task, small enough to
# spread a folder over the cluster's CPUs.
_IMAGES_PER_SHARD = 256


class DataSourceError(ValueError):
    """A data source names nothing readable (raised on the driver, before training)."""


def _read(batch: dict[str, np.ndarray], *, options: Any) -> pa.Table:
    tables = [
        read_shard(Shard(files=tuple(str(f) for f in files), key=str(key)), options)
        for files, key in zip(batch["files"], batch["shard_key"], strict=True)
    ]
    rows = pa.concat_tables(tables)
    return pa.table(
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
        files, _ = list_input_files(options.root, format=options.format, extensions=options.extensions)
        if options.captions_file:
            read_captions_file(options.captions_file)
    except InputListingError as exc:  # its message names the generation jobs' key, input.uri
        raise DataSourceError(str(exc).replace("input.uri", f"{key}.uri", 1)) from None
    except CaptionsFileError as exc:
        raise DataSourceError(f"{key}: {exc}") from None
    if not files:
        raise DataSourceError(f"{key}.uri: no {source.format} files under {source.uri}")
    shards = plan_shards(files, format=options.format, files_per_shard=_IMAGES_PER_SHARD)
    rows = count_rows(files, options)
    if rows is not None and source.max_rows is not None:
        rows = min(rows, source.max_rows)
    return PairsPlan(key=key, shards=tuple(shards), reader=options, rows=rows, max_rows=source.max_rows)


def read_pairs(pairs: PairsPlan) -> Any:
    """A lazy Ray Dataset of {id, source, target, error} for one split's pairs."""
    import ray.data

    items = [{"shard_key": s.key, "files": list(s.files)} for s in pairs.shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read, batch_size=1, batch_format="numpy", fn_kwargs={"options": pairs.reader}
    )
    if pairs.max_rows is not None:
        ds = ds.limit(pairs.max_rows)
    return ds
