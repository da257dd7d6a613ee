"""The reading layer of every job: listing input files (fsspec: local, file://, s3://...),
grouping them into shards, and reading one shard into rows.

A *shard* is the unit of work and of commit: one Parquet / JSONL / text file, a range
of a large Parquet file's row groups, or a group of image files. Every row a shard yields has a stable id, its source (file URI
and row number), an optional reference text, and either a payload (image or text
bytes) or a read error, so a bad row is reported, never dropped. Generation jobs and
fine-tuning read through these same functions.

    options      the formats, their file endings, ReaderOptions
    source       InputSource: the `input:` block every job spec shares
    listing      list_inputs: files under a URI, the skipped ones, sizes; relative ids
    shards       Shard, plan_shards, count_rows
    row_groups   Parquet footers on the driver; a large file's row groups cut into ranges
    rows         ROW_SCHEMA and the builder the readers fill
    read         iter_shard / read_shard: the dispatcher over the formats
    tables       Parquet and JSON lines rows
    captions     an image folder's captions file
    compression  .gz / .zst / .bz2 / .xz, keeping what was read before a break
    probe        what a file is, from its first bytes (the driver's checks)
    duplicates   the duplicate-id pass
    id_index     its ids as 64-bit hashes and packed positions (16 bytes a row)
"""

from .captions import CaptionsFileError, read_captions_file
from .compression import MissingCodecError
from .duplicates import (
    duplicate_rows,
    find_duplicates,
    ids_can_repeat,
    read_shard_ids,
)
from .id_index import IdPassLimitError
from .listing import (
    InputListing,
    InputListingError,
    glob_base,
    has_pattern,
    list_input_files,
    list_inputs,
    relative_id,
)
from .options import (
    IMAGE_EXTENSIONS,
    InputFormat,
    ReaderOptions,
    format_extensions,
    input_extensions,
)
from .probe import check_input_files, read_head, sniff, with_article
from .read import iter_shard, read_shard
from .row_groups import SHARD_BYTES, footer_row_groups
from .rows import ROW_SCHEMA, Duplicates
from .shards import (
    FILES_PER_SHARD,
    CommittedGroups,
    InputChangedError,
    Shard,
    count_rows,
    plan_shards,
)
from .source import InputSource

__all__ = [
    "FILES_PER_SHARD",
    "IMAGE_EXTENSIONS",
    "ROW_SCHEMA",
    "SHARD_BYTES",
    "CaptionsFileError",
    "CommittedGroups",
    "Duplicates",
    "IdPassLimitError",
    "InputChangedError",
    "InputFormat",
    "InputListing",
    "InputListingError",
    "InputSource",
    "MissingCodecError",
    "ReaderOptions",
    "Shard",
    "check_input_files",
    "count_rows",
    "duplicate_rows",
    "find_duplicates",
    "footer_row_groups",
    "format_extensions",
    "glob_base",
    "has_pattern",
    "ids_can_repeat",
    "input_extensions",
    "iter_shard",
    "list_input_files",
    "list_inputs",
    "plan_shards",
    "read_captions_file",
    "read_head",
    "read_shard",
    "read_shard_ids",
    "relative_id",
    "sniff",
    "with_article",
]
