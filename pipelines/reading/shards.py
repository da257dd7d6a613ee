"""Shards: the unit of work and of commit, and how input files group into them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .options import InputFormat, ReaderOptions


@dataclass(frozen=True)
class Shard:
    """One unit of work: the files it reads and a key derived from them.

    `key` is a hash of the member URIs, so the same files always give the same key
    (and the same output file names) across runs.
    """

    files: tuple[str, ...]
    key: str = field(default="")
    # Bytes of its files when the listing said (0 = unknown); sizes read tasks (stages.py).
    nbytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            digest = hashlib.sha256("\n".join(self.files).encode()).hexdigest()[:20]
            object.__setattr__(self, "key", digest)



def count_rows(files: Sequence[str], opts: ReaderOptions) -> int | None:
    """Rows in `files` when known without reading them: one per image / text file, or
    Parquet footers. None for JSONL and text lines (only a full read counts those)."""
    if opts.format in ("images", "text_files"):
        return len(files)
    if opts.format != "parquet":
        return None
    total = 0
    for uri in files:
        fs, path = url_to_fs(uri, **opts.storage_options)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def plan_shards(
    files: Sequence[str], *, format: InputFormat, files_per_shard: int = 1, sizes: Mapping[str, int] | None = None
) -> list[Shard]:
    """Group input files into shards: image and text files (one row each) by
    `files_per_shard`, others one per file.

    `sizes` (from `list_inputs`) gives each shard its `nbytes`.
    """
    size = files_per_shard if format in ("images", "text_files") else 1
    sizes = sizes or {}
    groups = [tuple(files[i : i + size]) for i in range(0, len(files), size)]
    return [Shard(files=g, nbytes=sum(sizes.get(f, 0) for f in g)) for g in groups]
