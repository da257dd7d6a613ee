"""The duplicate-id pass: rows whose id (from a column of the data) appeared earlier.

Ids that come from the data can repeat; a repeated id would join two outputs to one
input. Before a job's pipeline starts, every row's id is read (only the id column where
the format allows), the first occurrence of each id wins, and each later row is
rejected as an error row (cause duplicate_id) by the reader. Small inputs are read on
the driver, larger ones by Ray Data tasks (which send hashes of the ids, not the ids).

The driver holds 16 bytes a row (id_index.IdIndex: a 64-bit hash of the id and a packed
position), not the ids: 10**8 rows are 1.6 GB, not 10 GB of Python strings. Rows whose
hash repeats are candidates; the files holding them are read again and the real ids
decide, so two ids that share a hash are never taken for one.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .id_index import HashIds, IdIndex, hash_ids, isin_sorted, pack, unpack
from .options import ReaderOptions
from .read import read_shard
from .shards import InputChangedError, Shard

log = logging.getLogger(__name__)

def ids_can_repeat(opts: ReaderOptions) -> bool:
    """False when ids are unique by construction (file paths, '<file>#<row>'); True when
    they come from a column of the data (parquet / jsonl with an id column)."""
    return (opts.format in ("parquet", "jsonl") and bool(opts.id_column)) or opts.format == "webdataset"



def read_shard_ids(shard: Shard, opts: ReaderOptions) -> pa.Table:
    """The id, source_uri and source_row of every row `read_shard` yields for `shard`,
    reading only the id column where the format allows (the duplicate-id pass).

    Samples the reader rejects without their payload (a WebDataset sample without its
    image, a json member that does not parse, members split across the tar) claim no id:
    they go to _errors with their own cause, and a later sample with the same id and an
    image is processed. (Parquet / JSONL rows are read here without their input column,
    so their input's problems are not known yet: they claim their id.)
    """
    table = read_shard(shard, replace(opts, input_column=None, reference_column=None, captions_file=None, payloads=False))
    if opts.format == "webdataset":
        table = table.filter(pc.invert(pc.is_in(table.column("error_cause"), pa.array(sorted(_NO_CLAIM)))))
    return table.select(["id", "source_uri", "source_row"])


# Read causes of WebDataset samples that hold no input to process (see read_shard_ids).
_NO_CLAIM = frozenset({"missing_image", "bad_json", "split_sample"})


# (rank, table) pairs of read_shard_ids tables (or ones with an `id_hash` column instead of
# `id`, hashed by hash_ids in Ray tasks).
IdTables = Iterable[tuple[int, pa.Table]]
# Reads ids for find_duplicates. Called with None: every row, in any order. Called with a
# set of (rank, source_uri): tables holding at least the rows of those files, with `id`.
ReadIds = Callable[[Collection[tuple[int, str]] | None], IdTables]

_MESSAGE = "id {id!r} first appears in {uri} row {row}, which is kept; this later row is not processed"


def find_duplicates(ids: ReadIds | Sequence[tuple[int, pa.Table]], *,
                    hash_fn: HashIds = hash_ids) -> dict[tuple[str, int], str]:
    """Rows whose id appeared earlier, in (rank, source_uri, source_row) order:
    (source_uri, source_row) -> why. Rows with source_row < 0 (file-level errors) are
    no rows of data and are skipped.

    A lower rank wins (a resumed job ranks committed shards first, so a row already in the
    output stays the first occurrence). `ids` is a ReadIds function or, for ids already in
    memory, a sequence of (rank, table) pairs. The ids are read twice: once whole, held as
    a hash and a packed position (16 bytes a row, id_index.IdIndex), then only the files
    holding rows whose hash repeats, whose real ids decide (different ids may share a hash).
    """
    read = ids if callable(ids) else _from_tables(ids)
    index = IdIndex(hash_fn)
    for rank, table in read(None):
        index.add(rank, table)
    hashes, positions = index.candidates()
    if not len(positions):
        return {}
    files = {index.files[f] for f in np.unique(unpack(positions)[0]).tolist()}
    log.info("%d of %d row(s) share an id hash with another row; reading the ids of their %d file(s) again",
             len(positions), index.rows, len(files))
    real = _candidate_ids(index, hashes, positions, read(files))
    return _later_rows(index, hashes, positions, real)


def _from_tables(tables: Sequence[tuple[int, pa.Table]]) -> ReadIds:
    if not isinstance(tables, Sequence):
        raise TypeError("find_duplicates reads ids twice: pass a ReadIds function or a sequence of "
                        f"(rank, table) pairs, not {type(tables).__name__}")
    return lambda files: tables  # more rows than `files` hold is allowed: they are skipped


def _candidate_ids(index: IdIndex, hashes: np.ndarray, positions: np.ndarray, tables: IdTables) -> pa.Array:
    """The real id at each candidate position (a large_string array in `positions` order)."""
    order = np.argsort(positions, kind="stable")
    wanted = positions[order]
    found_at, found_ids = [], []
    for rank, table in tables:
        rows, at = index.rows_of_data(rank, table, add_files=False)
        if not len(at):
            continue
        # the wanted positions between this table's first and last (often one file's few)
        near = wanted[np.searchsorted(wanted, at.min()):np.searchsorted(wanted, at.max(), "right")]
        hit = isin_sorted(at, near)
        if hit.any():
            found_at.append(at[hit])
            found_ids.append(rows.column("id").filter(pa.array(hit)).cast(pa.large_string()).combine_chunks())
    at = np.concatenate(found_at) if found_at else np.zeros(0, np.uint64)
    by_position = np.argsort(at, kind="stable")
    if not np.array_equal(at[by_position], wanted):
        missing = np.setdiff1d(wanted, at)
        if len(missing):
            raise InputChangedError(_changed(index, missing[0], "is not there any more"))
        values, counts = np.unique(at, return_counts=True)
        extra = values[counts > np.unique(wanted, return_counts=True)[1]][0]
        raise InputChangedError(_changed(index, extra, "is there more times than before"))
    real = pa.concat_arrays(found_ids).take(pa.array(by_position))  # in `wanted` order
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    real = real.take(pa.array(back))
    differ = np.flatnonzero(index.hash_fn(real) != hashes)
    if len(differ):
        raise InputChangedError(_changed(index, positions[differ[0]], "holds another id now"))
    return real


def _changed(index: IdIndex, position: np.uint64, what: str) -> str:
    files, rows = unpack(np.array([position], np.uint64))
    uri = index.files[int(files[0])][1]
    return (f"{uri} changed while the duplicate-id pass read it: row {int(rows[0])}, whose id was read "
            f"a moment before, {what}; inputs must not change while a job reads them")


def _later_rows(index: IdIndex, hashes: np.ndarray, positions: np.ndarray,
                real: pa.Array) -> dict[tuple[str, int], str]:
    """Among candidates, the rows whose real id a row earlier in (rank, uri, row) order has."""
    files, rows = unpack(positions)
    ranked = index.file_order()
    ordered = pack(ranked[files], rows)  # compares as (rank, source_uri, source_row) do
    table = pa.table({"hash": hashes, "id": real, "at": ordered}).sort_by(
        [("hash", "ascending"), ("id", "ascending"), ("at", "ascending")])
    at = table.column("at").to_numpy()
    same = _same_as_previous(table.column("hash").to_numpy(), table.column("id").combine_chunks())
    idx = np.arange(len(at))
    first = np.maximum.accumulate(np.where(same, 0, idx))  # the group's first row: the kept one
    later = np.flatnonzero(same)
    later = later[np.argsort(at[later], kind="stable")]
    by_place = sorted(index.files)
    file_of, row_of = unpack(at)
    out = {}
    for i, rid in zip(later.tolist(), table.column("id").take(pa.array(later)).to_pylist(), strict=True):
        j = int(first[i])
        out[(by_place[file_of[i]][1], int(row_of[i]))] = _MESSAGE.format(
            id=rid, uri=by_place[file_of[j]][1], row=int(row_of[j]))
    return out


def _same_as_previous(hashes: np.ndarray, ids: pa.Array) -> np.ndarray:
    """Per row (sorted by hash, id), whether the row before has the same id; nulls match."""
    same = np.zeros(len(hashes), bool)
    if len(hashes) > 1:
        a, b = ids.slice(1), ids.slice(0, len(ids) - 1)
        equal = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        same[1:] = (hashes[1:] == hashes[:-1]) & equal.to_numpy(zero_copy_only=False)
    return same


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
    Cost: every input row's id is read and held on the driver as 16 bytes; the files
    holding rows whose id hash repeats are read a second time (find_duplicates).
    """
    if not todo or not ids_can_repeat(opts):
        return {}
    ranked = [(0, s) for s in done] + [(1, s) for s in todo]
    skip = _rows_by_uri(committed_duplicates()) if done else {}

    def read_ids(files: Collection[tuple[int, str]] | None) -> IdTables:
        chosen = ranked if files is None else [(r, s) for r, s in ranked if any((r, f) in files for f in s.files)]
        for rank, table in _read_ranked(opts, chosen, hashed=files is None):
            yield rank, (_without(table, skip) if rank == 0 and skip else table)

    found = find_duplicates(read_ids)
    out: dict[str, list] = {}
    shard_of = _shard_keys(todo)
    for (uri, row), why in found.items():
        key = shard_of(uri, row)
        if key is not None:
            out.setdefault(key, []).append([uri, row, why])
    if found:
        log.warning("%d row(s) repeat an earlier id; they go to _errors (cause duplicate_id)", len(found))
    return out


def _read_ranked(opts: ReaderOptions, ranked: list[tuple[int, Shard]], *, hashed: bool) -> IdTables:
    """read_shard_ids of each shard with its rank: on the driver for a few files, else on
    Ray, where `hashed` has the tasks send id hashes (8 bytes) instead of the ids."""
    if sum(len(s.files) for _, s in ranked) <= _DRIVER_ID_PASS_FILES:
        return ((rank, read_shard_ids(s, opts)) for rank, s in ranked)
    return _ids_on_ray(opts, ranked, hashed=hashed)


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


def _rows_by_uri(rows: set[tuple[str, int]]) -> dict[str, np.ndarray]:
    by_uri: dict[str, list[int]] = {}
    for uri, row in rows:
        by_uri.setdefault(uri, []).append(row)
    return {uri: np.array(sorted(r), np.int64) for uri, r in by_uri.items()}


def _without(ids: pa.Table, rows: Mapping[str, np.ndarray]) -> pa.Table:
    """`ids` (read_shard_ids) less the rows at the given source_row of each source_uri."""
    uris = ids.column("source_uri")
    drop = np.zeros(ids.num_rows, bool)
    for uri in pc.unique(uris).to_pylist():
        if uri in rows:
            in_file = pc.equal(uris, uri).to_numpy()
            drop |= in_file & np.isin(ids.column("source_row").to_numpy(), rows[uri])
    return ids.filter(pa.array(~drop)) if drop.any() else ids


def _ids_on_ray(opts: ReaderOptions, ranked: list[tuple[int, Shard]], *, hashed: bool) -> IdTables:
    import ray.data

    # JSON: a shard's description mixes lists and numbers (no one Arrow type across shards).
    items = [{"rank": rank, "shard": json.dumps(s.describe())} for rank, s in ranked]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_ids, batch_size=1, batch_format="numpy", fn_kwargs={"opts": opts, "hashed": hashed}
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for rank in sorted(set(batch.column("rank").to_pylist())):
            yield rank, batch.filter(pc.equal(batch.column("rank"), rank))


def _read_ids(batch: dict[str, np.ndarray], *, opts: ReaderOptions, hashed: bool = False) -> pa.Table:
    """CPU stage of the duplicate-id pass on Ray: a shard's ids (or their hashes) and where
    they are."""
    tables = []
    for rank, shard in zip(batch["rank"], batch["shard"], strict=True):
        ids = read_shard_ids(Shard.described(json.loads(shard)), opts)
        if hashed:
            hashes = pa.array(hash_ids(ids.column("id")), pa.uint64())
            ids = ids.drop_columns(["id"]).append_column("id_hash", hashes)
        tables.append(ids.append_column("rank", pa.array([int(rank)] * ids.num_rows, pa.int64())))
    return pa.concat_tables(tables)
