"""Reading one shard into rows: the dispatcher over the formats.

A *shard* is the unit of work and of commit: one Parquet / JSONL / text file, a range
of a large Parquet file's row groups, or a group of image files. Every row a shard yields has a stable id, its source (file
URI and row number), an optional reference text (a reference column, or the captions
file of an image folder), and either a payload (image bytes or text bytes) or a read
error, so a bad row is reported, never dropped. A shard is read as a stream of tables
(iter_shard), never whole in memory. Generation jobs and fine-tuning read through these
same functions (fine-tuning takes the reference as its target).
"""


from __future__ import annotations

import itertools
from collections.abc import Iterator

import fsspec
import pyarrow as pa
from fsspec.core import url_to_fs

from .captions import captions_for
from .compression import Decompressed, MissingCodecError, compression_of, lines
from .listing import relative_id
from .options import ReaderOptions
from .rows import ROW_SCHEMA, Duplicates, RowBuilder, with_shard_rows
from .shards import Shard
from .tables import BadLine, jsonl_records, read_parquet, read_records
from .webdataset import ShardCutError, read_webdataset


def iter_shard(shard: Shard, opts: ReaderOptions, *, duplicates: Duplicates | None = None) -> Iterator[pa.Table]:
    """The rows of `shard` as ROW_SCHEMA tables, a few MiB of payload each, as they are read.

    Parquet is read a record batch at a time and image / text files one file at a
    time, so a read holds a few tables, never the shard. `shard_rows` is -1 on every
    table but the last (rows.py). A file that cannot be read at all (missing, not
    Parquet...) becomes one error row with id '<file>#file', so the failure is counted
    and visible in _errors; a range of a Parquet file whose footer no longer reads
    becomes one error row per row the driver counted in it. Rows named in `duplicates`
    become error rows with cause duplicate_id.
    """
    rows = RowBuilder(shard, duplicates or {})
    for uri in shard.files:
        fs, path = url_to_fs(uri, **opts.storage_options)
        before = rows.rows
        try:
            for _ in _read_file(rows, fs, path, uri, opts, shard):
                if rows.full:
                    yield from rows.tables()
        except ShardCutError as exc:
            rows.add(id=f"{relative_id(uri, opts.root)}#file", source_uri=uri, source_row=-1,
                     error=("read", "truncated_file", f"file-level error: {uri}: {exc}; the samples before "
                            "the break were read, the rest are lost"))
        except _FileError as exc:
            rows.add(id=f"{relative_id(uri, opts.root)}#file", source_uri=uri, source_row=-1,
                     error=("read", exc.cause, f"file-level error: {uri}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - any failure to read a file is reported as a row
            cause = "missing_codec" if isinstance(exc, MissingCodecError) else "unreadable_file"
            _file_failed(rows, shard, uri, opts, cause, exc, read=rows.rows - before)
        if rows.full:
            yield from rows.tables()
    yield from rows.close()


def read_shard(shard: Shard, opts: ReaderOptions, *, duplicates: Duplicates | None = None) -> pa.Table:
    """All rows of `shard` as one ROW_SCHEMA table (`iter_shard`'s tables together, the
    shard's row count on every row): for callers that want the shard whole."""
    tables = list(iter_shard(shard, opts, duplicates=duplicates))
    return with_shard_rows(pa.concat_tables(tables)) if tables else ROW_SCHEMA.empty_table()


def _file_failed(rows: RowBuilder, shard: Shard, uri: str, opts: ReaderOptions, cause: str, exc: Exception, *,
                 read: int) -> None:
    """The error rows of a file that cannot be read: one '#file' row, or, for a range of
    row groups whose rows the driver counted, one row per row not read."""
    base = relative_id(uri, opts.root)
    if shard.row_groups is not None and shard.rows is not None:
        first, stop = shard.rows
        start, end = shard.row_groups
        message = (f"cannot read the file {uri} ({type(exc).__name__}: {exc}) for its row groups {start}-{end - 1}, "
                   f"rows {first}-{stop - 1}; those rows are lost")
        for i in range(first + read, stop):
            rows.add(id=f"{base}#{i}", source_uri=uri, source_row=i, error=("read", cause, message))
        return
    name = "file" if shard.row_groups is None else f"file:row_groups={shard.row_groups[0]}-{shard.row_groups[1] - 1}"
    rows.add(id=f"{base}#{name}", source_uri=uri, source_row=-1,
             error=("read", cause, f"file-level error: cannot read the file {uri} "
                    f"({type(exc).__name__}: {exc}); how many rows it holds is unknown"))


def _read_file(rows: RowBuilder, fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReaderOptions,
               shard: Shard) -> Iterator[None]:
    """Add the rows of one file; yields where a table may be cut (Parquet: per record
    batch; WebDataset: per sample; JSONL / text lines: per line)."""
    if opts.format == "images" or opts.format == "text_files":
        rid = relative_id(uri, opts.root)
        reference = captions_for(opts.captions_file, opts.storage_options).get(rid) if opts.captions_file else None
        if opts.format == "images":
            with fs.open(path, "rb") as f:
                payload, broken = f.read(), None
        else:
            payload, broken = _read_text(fs, path, uri)
        if broken:  # one document per file: a part of it is not the document
            rows.add(id=rid, source_uri=uri, source_row=0, reference=reference,
                     error=("read", "truncated_file", f"file-level error: {uri}: {broken}"))
        else:
            rows.add(id=rid, source_uri=uri, source_row=0, payload=payload, reference=reference)
        return
    if opts.format == "parquet":
        yield from read_parquet(rows, fs, path, uri, opts, shard)
        return
    if opts.format == "webdataset":
        yield from read_webdataset(rows, fs, path, uri, opts)
        return
    base = relative_id(uri, opts.root)
    with fs.open(path, "rb") as f:
        text = Decompressed(f, compression_of(uri))
        chunks = iter(text)
        first = next(chunks, b"")
        if first.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise _FileError("not_utf8", "the file is UTF-16 text; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
        first = first.removeprefix(_UTF8_BOM)
        # a stream of lines: a file of any size is read in bounded memory
        text_lines = lines(itertools.chain((first,), chunks), complete=lambda: text.broken is None)
        if opts.format == "text_lines":
            # Ids are line numbers; blank lines (paragraph breaks) hold no text and are skipped.
            for i, line in enumerate(text_lines):
                if line.strip():
                    rows.add(id=f"{base}#{i}", source_uri=uri, source_row=i, payload=line)
                    yield
        else:
            # jsonl: parse errors are per line, so one bad line does not lose the file
            for i, record in jsonl_records(text_lines):
                if isinstance(record, BadLine):
                    rows.add(id=f"{base}#{i}", source_uri=uri, source_row=i, error=("read", record.cause, record.message))
                else:
                    read_records(rows, uri, [record], opts, first_row=i)
                yield
    if text.broken:
        _check_decoded(text, uri)
        raise _FileError("truncated_file", f"{text.broken}; the rows above the break were read, the rest are lost")


# Windows tools (Notepad, Excel's "CSV UTF-8", PowerShell) start UTF-8 files with it:
# not text, and json.loads refuses a line that starts with it.
_UTF8_BOM = b"\xef\xbb\xbf"


def _read_text(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> tuple[bytes, str | None]:
    """A text file's bytes (without a UTF-8 byte order mark), decompressed by its name's
    codec, and where it broke (or None)."""
    with fs.open(path, "rb") as f:
        text = Decompressed(f, compression_of(uri))
        data = b"".join(text).removeprefix(_UTF8_BOM)
    if text.broken:
        _check_decoded(text, uri)
    return data, text.broken


def _check_decoded(text: Decompressed, uri: str) -> None:
    """Nothing decoded at all is no break but a file that is not what its name says."""
    if not text.decoded and text.read:
        raise _FileError("unreadable_file", f"the file is not {text.codec} data, as its name says ({text.broken})")


class _FileError(Exception):
    """A file-level failure with its cause (iter_shard adds the file's error row)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
