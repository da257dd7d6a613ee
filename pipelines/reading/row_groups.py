"""Parquet footers on the driver, and how a file's row groups are cut into shards.

A Parquet file is split the way Spark and Ray Data split it: into contiguous ranges of
row groups (a row group is the smallest part a reader can read alone), packed up to a
target size of compressed bytes, one row group at least. Only the footers are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

# Compressed bytes of input per shard (a commit unit; see also JobInput.shard_mib). A
# shard of 64 MiB of encoded images is about 256 web images of ~250 KB, the work of one
# default shard of image files (files_per_shard 256), or a dozen 5 MB photos, whose
# decoding costs about as much CPU: seconds to a minute per model actor, so commits flow
# and a crash redoes little. Spark (spark.sql.files.maxPartitionBytes) and Ray Data
# split at 128 MiB for scans, where a task's fixed cost weighs more; here the model's
# time dominates a shard, and twice as many commits (a dozen storage requests each, on
# the driver) cost less than commits twice as far apart. Memory does not depend on it:
# a shard is read a few record batches at a time (tables.read_parquet).
SHARD_BYTES = 64 * 1024**2

# Footers read at once on the driver: each is one or two small reads at the end of a
# file (tens of milliseconds on object storage), so listing 10^4 large files takes
# seconds, not minutes. Files no larger than a shard are never opened (they cannot split).
_FOOTER_THREADS = 32


@dataclass(frozen=True)
class RowGroups:
    """What planning needs of a Parquet footer: rows and compressed bytes per row group."""

    rows: tuple[int, ...]
    nbytes: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows)

    def first_row(self, group: int) -> int:
        """The row number, within the file, of row group `group`'s first row."""
        return sum(self.rows[:group])


def footer_row_groups(uri: str, storage_options: Mapping[str, Any] | None = None) -> RowGroups:
    """The row groups of the Parquet file at `uri`, from its footer only (raises when the
    file has no readable footer)."""
    fs, path = url_to_fs(uri, **dict(storage_options or {}))
    with fs.open(path, "rb") as f:
        md = pq.ParquetFile(f).metadata
    groups = [md.row_group(i) for i in range(md.num_row_groups)]
    return RowGroups(
        rows=tuple(g.num_rows for g in groups),
        nbytes=tuple(sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups),
    )


def read_footers(
    files: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, RowGroups | Exception]:
    """Each file's row groups, or the exception reading its footer raised (the read task
    reports it as the file's error rows); footers are read by a thread pool."""

    def one(uri: str) -> RowGroups | Exception:
        try:
            return footer_row_groups(uri, storage_options)
        except Exception as exc:  # noqa: BLE001 - the file is planned whole; its read reports this
            return exc

    if len(files) <= 1:
        return {f: one(f) for f in files}
    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, len(files))) as pool:
        return dict(zip(files, pool.map(one, files), strict=True))


def pack_row_groups(nbytes: Sequence[int], target: int, *, skip: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Contiguous ranges [start, stop) of row groups, each up to `target` bytes (one row
    group at least), leaving out the groups in `skip` (committed already).

    Greedy from the first group, so a file's ranges are the same in every run; a
    resumed run packs only the runs of groups not committed, whose edges are edges of
    the first run's ranges, so it gets the same ranges there too.
    """
    skipped = set(skip)
    ranges: list[tuple[int, int]] = []
    start, held = -1, 0
    for i, size in enumerate(nbytes):
        if i in skipped:
            if start >= 0:
                ranges.append((start, i))
            start, held = -1, 0
            continue
        if start >= 0 and held + size > target:
            ranges.append((start, i))
            start, held = -1, 0
        if start < 0:
            start = i
        held += size
    if start >= 0:
        ranges.append((start, len(nbytes)))
    return ranges
