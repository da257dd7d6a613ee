"""The duplicate-id pass: rows whose id (from a column of the data) appeared earlier.

Ids that come from the data can repeat; a repeated id would join two outputs to one
input. Before a job's pipeline starts, every row's id is read (only the id column where
the format allows), the first occurrence of each id wins, and each later row is
rejected as an error row (cause duplicate_id) by the reader. Small inputs are read on
the driver, larger ones by Ray Data tasks.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .options import ReaderOptions
from .read import read_shard
from .shards import Shard

log = logging.getLogger(__name__)

def ids_can_repeat(opts: ReaderOptions) -> bool:
    """False when ids are unique by construction (file paths, '<file>#<row>'); True when
    they come from a column of the data (parquet / jsonl with an id column)."""
    return (opts.format in ("parquet", "jsonl") and bool(opts.id_column)) or opts.format == "webdataset"



def read_shard_ids(shard: Shard, opts: ReaderOptions) -> pa.Table:
    """The id, source_uri and source_row of every row `read_shard` yields for `shard`,
    reading only the id column where the format allows (the duplicate-id pass)."""
    table = read_shard(shard, replace(opts, input_column=None, reference_column=None, captions_file=None, payloads=False))
    return table.select(["id", "source_uri", "source_row"])


def find_duplicates(id_tables: Iterable[tuple[int, pa.Table]]) -> dict[tuple[str, int], str]:
    """Rows whose id appeared earlier, in (rank, source_uri order, source_row) order.

    `id_tables` yields (rank, table of read_shard_ids) pairs; a lower rank wins (a
    resumed job ranks committed shards first, so a row already in the output stays
    the first occurrence). Holds every id once in memory (about 100 bytes a row).
    """
    first: dict[str, tuple[int, str, int]] = {}
    later: list[tuple[str, tuple[int, str, int]]] = []
    for rank, table in id_tables:
        for rid, uri, row in zip(*(table.column(c).to_pylist() for c in ("id", "source_uri", "source_row")), strict=True):
            if row < 0:
                continue  # a file-level read error, not a row of data
            pos = (rank, uri, row)
            seen = first.get(rid)
            if seen is None:
                first[rid] = pos
            elif pos < seen:
                later.append((rid, seen))
                first[rid] = pos
            else:
                later.append((rid, pos))
    out = {}
    for rid, (_, uri, row) in later:
        _, first_uri, first_row = first[rid]
        out[(uri, row)] = f"id {rid!r} first appears in {first_uri} row {first_row}, which is kept; this later row is not processed"
    return out


# Up to this many files the ids are read on the driver, one file after another; above it
# Ray Data reads them in parallel (a task costs more than reading a few id columns).
_DRIVER_ID_PASS_FILES = 64


def duplicate_rows(
    opts: ReaderOptions,
    *,
    done: list[Shard],
    todo: list[Shard],
    committed_duplicates: Callable[[], set[tuple[str, int]]],
) -> dict[str, list]:
    """Per shard key, the rows of `todo` whose id appeared before: [[uri, row, why], ...].

    Only when ids come from a column (ids_can_repeat). Committed shards (`done`) rank
    first, so a row already in the output stays the first occurrence when a resumed job
    finds new files with the same id; otherwise the first in (file, row) order is kept.
    Committed rows that were themselves duplicates (`committed_duplicates`) claim
    nothing: shards commit in any order, so the row they deferred to may be in `todo`.
    Cost: every input row's id is read again and held on the driver once.
    """
    if not todo or not ids_can_repeat(opts):
        return {}
    ranked = [(0, s) for s in done] + [(1, s) for s in todo]
    if sum(len(s.files) for _, s in ranked) <= _DRIVER_ID_PASS_FILES:
        tables: Iterable[tuple[int, pa.Table]] = ((rank, read_shard_ids(s, opts)) for rank, s in ranked)
    else:
        tables = _ids_on_ray(opts, ranked)
    skip = committed_duplicates() if done else set()
    found = find_duplicates(
        (rank, _without(table, skip) if rank == 0 and skip else table) for rank, table in tables
    )
    out: dict[str, list] = {}
    shard_of = _shard_keys(todo)
    for (uri, row), why in found.items():
        key = shard_of(uri, row)
        if key is not None:
            out.setdefault(key, []).append([uri, row, why])
    if found:
        log.warning("%d row(s) repeat an earlier id; they go to _errors (cause duplicate_id)", len(found))
    return out


def _shard_keys(shards: list[Shard]) -> Callable[[str, int], str | None]:
    """(source_uri, source_row) -> the key of the shard in `shards` that reads that row
    (a file split into ranges of row groups has one shard per range of rows)."""
    whole: dict[str, str] = {}
    ranges: dict[str, list[tuple[int, int, str]]] = {}
    for s in shards:
        if s.row_groups is None:
            whole.update((f, s.key) for f in s.files)
        elif s.rows is not None:
            ranges.setdefault(s.files[0], []).append((s.rows[0], s.rows[1], s.key))
    starts = {uri: [start for start, _, _ in sorted(spans)] for uri, spans in ranges.items()}
    for spans in ranges.values():
        spans.sort()

    def key(uri: str, row: int) -> str | None:
        if uri in whole:
            return whole[uri]
        i = bisect.bisect_right(starts.get(uri, []), row) - 1
        if i < 0:
            return None
        start, stop, found = ranges[uri][i]
        return found if start <= row < stop else None

    return key


def _without(ids: pa.Table, rows: set[tuple[str, int]]) -> pa.Table:
    """`ids` (read_shard_ids) less the rows at the given (source_uri, source_row)."""
    keep = [(u, r) not in rows for u, r in zip(ids.column("source_uri").to_pylist(),
                                                ids.column("source_row").to_pylist(), strict=True)]
    return ids.filter(pa.array(keep, pa.bool_()))


def _ids_on_ray(opts: ReaderOptions, ranked: list[tuple[int, Shard]]) -> Iterator[tuple[int, pa.Table]]:
    import ray.data

    # JSON: a shard's description mixes lists and numbers (no one Arrow type across shards).
    items = [{"rank": rank, "shard": json.dumps(s.describe())} for rank, s in ranked]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_ids, batch_size=1, batch_format="numpy", fn_kwargs={"opts": opts}
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for rank in sorted(set(batch.column("rank").to_pylist())):
            yield rank, batch.filter(pc.equal(batch.column("rank"), rank))


def _read_ids(batch: dict[str, np.ndarray], *, opts: ReaderOptions) -> pa.Table:
    """CPU stage of the duplicate-id pass on Ray: a shard's ids and where they are."""
    tables = []
    for rank, shard in zip(batch["rank"], batch["shard"], strict=True):
        ids = read_shard_ids(Shard.described(json.loads(shard)), opts)
        tables.append(ids.append_column("rank", pa.array([int(rank)] * ids.num_rows, pa.int64())))
    return pa.concat_tables(tables)
