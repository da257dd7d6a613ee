"""Shards: the unit of work and of commit, and how input files group into them.

    images, text_files   up to files_per_shard files and shard_bytes bytes (one file at least)
    parquet              one file whole, or a contiguous range of its row groups when the
                         file is larger than shard_bytes (row_groups.py)
    jsonl, text_lines, webdataset   one file each
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import JobError
from .options import InputFormat, ReaderOptions
from .row_groups import SHARD_BYTES, RowGroups, pack_row_groups, read_footers

# Image / text files per shard by default (a spec's files_per_shard): hundreds of rows are
# seconds of a model actor's time, so commits flow; fewer would multiply the driver's
# commits (a dozen storage requests each) and the output's part files. SHARD_BYTES
# bounds a shard of large photos as well.
FILES_PER_SHARD = 256

@dataclass(frozen=True)
class Shard:
    """One unit of work: the files it reads (or a range of one Parquet file's row groups)
    and a key derived from them.

    `key` is a hash of the member URIs, and of the range when there is one, so the same
    files always give the same key (and the same output file names) across runs; a
    Parquet file read whole keeps the key it had before files were split.
    """

    files: tuple[str, ...]
    key: str = field(default="")
    # Bytes of its files (or of its row groups) when known (0 = unknown); sizes read tasks (stages.py).
    nbytes: int = field(default=0, compare=False)
    # Parquet: the row groups [start, stop) of its one file (None: its files whole), and
    # how many the file has (the file is done when every range of it is committed).
    row_groups: tuple[int, int] | None = None
    file_row_groups: int = 0
    # The source_row of the range's first row and the one after its last, from the footer
    # the driver read: which shard a row of the file belongs to (the duplicate-id pass),
    # and the rows it stands for if the file cannot be read when its turn comes.
    rows: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.row_groups is not None and len(self.files) != 1:
            raise ValueError(f"a row-group range belongs to one file, not {len(self.files)}")
        if not self.key:
            name = "\n".join(self.files)
            if self.row_groups is not None:
                name += f"\nrow_groups={self.row_groups[0]}:{self.row_groups[1]}"
            object.__setattr__(self, "key", hashlib.sha256(name.encode()).hexdigest()[:20])

    def describe(self) -> dict[str, Any]:
        """The shard as plain JSON data (what travels to read tasks); `described` reverses it."""
        out: dict[str, Any] = {"key": self.key, "files": list(self.files)}
        if self.row_groups is not None:
            out.update(row_groups=list(self.row_groups), file_row_groups=self.file_row_groups)
        if self.rows is not None:
            out["rows"] = list(self.rows)
        return out

    @classmethod
    def described(cls, data: Mapping[str, Any]) -> Shard:
        groups, rows = data.get("row_groups"), data.get("rows")
        return cls(
            files=tuple(str(f) for f in data["files"]), key=str(data["key"]),
            row_groups=(int(groups[0]), int(groups[1])) if groups is not None else None,
            file_row_groups=int(data.get("file_row_groups", 0)),
            rows=(int(rows[0]), int(rows[1])) if rows is not None else None,
        )


@dataclass(frozen=True)
class CommittedGroups:
    """The row groups of one Parquet file that committed shards hold, and how many row
    groups the file had then."""

    of: int
    groups: frozenset[int]


class InputChangedError(JobError, ValueError):
    """An input file changed while a job reads it: a partly committed Parquet file has
    other row groups now than then, or a file's ids differ between the duplicate-id
    pass's two reads."""


def count_rows(files: Sequence[str], opts: ReaderOptions) -> int | None:
    """Rows in `files` when known without reading them: one per image / text file, or
    Parquet footers. None for JSONL and text lines (only a full read counts those)."""
    if opts.format in ("images", "text_files"):
        return len(files)
    if opts.format != "parquet":
        return None
    total = 0
    for footer in read_footers(files, opts.storage_options).values():
        if isinstance(footer, Exception):
            raise footer
        total += sum(footer.rows)
    return total


def plan_shards(
    files: Sequence[str],
    *,
    format: InputFormat,
    files_per_shard: int = 1,
    sizes: Mapping[str, int] | None = None,
    shard_bytes: int = SHARD_BYTES,
    committed: Mapping[str, CommittedGroups] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Shard]:
    """Group input files into shards (see the module docstring), in the order of `files`.

    `sizes` (from `list_inputs`) gives each shard its `nbytes`; a Parquet file whose
    size says it fits one shard is not opened. `committed` names, per Parquet file, the
    row groups already committed: only the others are planned (a resumed run).
    """
    sizes = sizes or {}
    if format == "parquet":
        return _parquet_shards(files, sizes, shard_bytes, committed or {}, storage_options)
    if format not in ("images", "text_files"):
        return [Shard(files=(f,), nbytes=sizes.get(f, 0)) for f in files]
    shards: list[Shard] = []
    group: list[str] = []
    held = 0
    for f in files:
        size = sizes.get(f, 0)
        if group and (len(group) >= files_per_shard or held + size > shard_bytes):
            shards.append(Shard(files=tuple(group), nbytes=held))
            group, held = [], 0
        group.append(f)
        held += size
    if group:
        shards.append(Shard(files=tuple(group), nbytes=held))
    return shards


def _parquet_shards(
    files: Sequence[str],
    sizes: Mapping[str, int],
    shard_bytes: int,
    committed: Mapping[str, CommittedGroups],
    storage_options: Mapping[str, Any] | None,
) -> list[Shard]:
    # A file no larger than a shard cannot split: the listing's size says so, unopened.
    opened = [f for f in files if f in committed or not 0 < sizes.get(f, 0) <= shard_bytes]
    footers = read_footers(opened, storage_options)
    shards: list[Shard] = []
    for f in files:
        footer = footers.get(f)
        done = committed.get(f)
        if isinstance(footer, RowGroups):
            if done is not None and footer.count != done.of:
                raise InputChangedError(
                    f"input file {f} had {done.of} row group(s) when part of it was committed, and has "
                    f"{footer.count} now: it changed since, so its committed rows are of another file. Restore "
                    "the file, or rerun with output.mode=overwrite"
                )
            shards += _file_ranges(f, footer, shard_bytes, done, sizes.get(f, 0))
        elif done is not None:
            # Partly committed, and the footer does not read now: the other ranges still
            # stand for the file's rows (their read reports the error), sizes unknown.
            for start, stop in pack_row_groups([0] * done.of, shard_bytes, skip=done.groups):
                shards.append(Shard(files=(f,), row_groups=(start, stop), file_row_groups=done.of))
        else:
            shards.append(Shard(files=(f,), nbytes=sizes.get(f, 0)))  # its read reports the footer
    return shards


def _file_ranges(
    uri: str, footer: RowGroups, shard_bytes: int, done: CommittedGroups | None, size: int
) -> list[Shard]:
    ranges = pack_row_groups(footer.nbytes, shard_bytes, skip=done.groups if done else ())
    if done is None and (not ranges or ranges == [(0, footer.count)]):
        return [Shard(files=(uri,), nbytes=size or sum(footer.nbytes))]  # whole: today's key
    out = []
    for start, stop in ranges:
        first = footer.first_row(start)
        out.append(Shard(
            files=(uri,), row_groups=(start, stop), file_row_groups=footer.count,
            nbytes=sum(footer.nbytes[start:stop]), rows=(first, first + sum(footer.rows[start:stop])),
        ))
    return out
