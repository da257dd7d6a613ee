"""Rows of tabular inputs: Parquet files and JSON lines, with a per-row problem for each
input that cannot be read (a missing field, a null, a struct without bytes, a bad id)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from .listing import relative_id
from .options import ReaderOptions
from .rows import RowBuilder
from .shards import Shard


def as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Hugging Face datasets Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def row_id(value: Any, uri: str, row: int, opts: ReaderOptions) -> str:
    """A row's id: its id column's value, or '<file relative to the root>#<row>' when it
    has none (null or blank)."""
    blank = value is None or (isinstance(value, str) and not value.strip())
    return f"{relative_id(uri, opts.root)}#{row}" if blank else str(value)


def read_records(
    rows: RowBuilder, uri: str, records: Iterable[dict[str, Any]], opts: ReaderOptions, *, first_row: int = 0
) -> None:
    for i, record in enumerate(records, start=first_row):
        rid = row_id(record.get(opts.id_column) if opts.id_column else None, uri, i, opts)
        ref = record.get(opts.reference_column) if opts.reference_column else None
        ref = None if ref is None else str(ref)
        value = record.get(opts.input_column) if opts.input_column else None
        problem = value_problem(record, value, opts)
        if problem is not None:
            rows.add(id=rid, source_uri=uri, source_row=i, reference=ref, error=("read", *problem))
            continue
        rows.add(id=rid, source_uri=uri, source_row=i, payload=as_bytes(value), reference=ref)


def value_problem(record: Mapping[str, Any], value: Any, opts: ReaderOptions) -> tuple[str, str] | None:
    """(cause, message) when a record's input cannot be read, else None."""
    col = opts.input_column
    if col not in record:
        return "missing_column", f"row has no '{col}' field; set the spec's input_column to the field that holds the input"
    if value is None:
        return "null_value", f"field '{col}' is null in this row: there is no input to read"
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        return "no_image_bytes", (
            f"field '{col}' is a {{bytes, path}} struct with no bytes, only the path {value['path']!r}: the export "
            "references image files instead of embedding them. Export with the images embedded (Hugging Face "
            "datasets: cast the column to Image() before saving), or read the image files with input.format=images"
        )
    if as_bytes(value) is None:
        return "wrong_type", f"field '{col}' holds {_kind(value)} ({_brief(value)}), not bytes or text"
    if opts.id_column:
        rid = record.get(opts.id_column)
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            return "missing_id", (
                f"row has no value in the id column '{opts.id_column}': ids are how output rows are joined back; "
                "fill it in the input, or unset input.id_column to use '<file>#<row>' ids"
            )
        if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
            return "bad_id", f"the id column '{opts.id_column}' holds {_kind(rid)} ({_brief(rid)}); ids are text or numbers"
    return None


# Bytes of the input's columns decoded at a time: a row group is read in record batches
# of about this much, so its rows become Python objects a few images at a time. pyarrow
# itself holds a row group's column chunk while it reads it (measured: about 3.5x a
# row group of 47 MB, resident at its peak), so a read's memory is bounded by the row
# groups the file's writer chose, never by the file or the shard.
_BATCH_BYTES = 8 * 1024**2
_BATCH_ROWS = 64 * 1024  # pyarrow's default batch size: small texts need no more per batch


def read_parquet(rows: RowBuilder, fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReaderOptions,
                 shard: Shard) -> Iterator[None]:
    """Add a Parquet file's rows (or those of the shard's range of its row groups), one
    record batch at a time; yields after each batch (a table may be cut there).

    A column the spec names is missing: each row of the range becomes an error row (the
    footer counts them), with its id when the id column reads. A row group that cannot
    be read (a corrupt page): its rows not read yet become error rows, with ids where
    they read, and the next row group is read as usual (row groups are independent).
    A footer that does not read raises (read.py reports the file).
    """
    wanted = list(dict.fromkeys(c for c in (opts.input_column, opts.id_column, opts.reference_column) if c))
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        groups = _range_of(shard, md.num_row_groups)
        names = pf.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        row = sum(md.row_group(g).num_rows for g in range(groups.start))
        for g in groups:
            if missing:
                _rows_failed(rows, pf, uri, opts, g, row, "missing_column", (
                    f"file-level error: {uri} has no column {', '.join(map(repr, missing))} (its columns: "
                    f"{', '.join(names)}), so none of its {md.num_rows} rows can be read; set the spec's "
                    "input_column / id_column / reference_column to columns the file has"))
            else:
                yield from _read_group(rows, pf, uri, opts, g, row, wanted)
            row += md.row_group(g).num_rows
            yield


def _range_of(shard: Shard, groups: int) -> range:
    """The row groups of the file that `shard` reads; raises when the file has changed
    since the driver planned the range."""
    if shard.row_groups is None:
        return range(groups)
    if groups != shard.file_row_groups:
        raise ValueError(f"the file changed since the job planned its shards: it has {groups} row group(s), "
                         f"{shard.file_row_groups} when planned; rerun the job (output.mode=resume) to read it as it is")
    return range(*shard.row_groups)


def _read_group(rows: RowBuilder, pf: pq.ParquetFile, uri: str, opts: ReaderOptions, group: int, first_row: int,
                wanted: list[str]) -> Iterator[None]:
    """Row group `group` batch by batch; its rows left when a batch fails are error rows."""
    done = 0
    try:
        batches = pf.iter_batches(batch_size=_batch_rows(pf.metadata.row_group(group), wanted),
                                  row_groups=[group], columns=wanted, use_threads=False)
        for batch in batches:
            read_records(rows, uri, batch.to_pylist(), opts, first_row=first_row + done)
            done += batch.num_rows
            yield
    except Exception as exc:  # noqa: BLE001 - reported per row below
        n = pf.metadata.row_group(group).num_rows
        _rows_failed(rows, pf, uri, opts, group, first_row, "unreadable_file", (
            f"cannot read row group {group} of {uri} (rows {first_row}-{first_row + n - 1}; "
            f"{type(exc).__name__}: {exc}): its {n - done} row(s) from row {first_row + done} on are lost; the "
            "rows before them and the file's other row groups are read"), skip=done)


def _batch_rows(group: Any, wanted: list[str]) -> int:
    """Rows per record batch for about _BATCH_BYTES of the wanted columns, decoded."""
    nbytes = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                 if group.column(c).path_in_schema.split(".")[0] in wanted)
    per_row = max(1, nbytes // max(1, group.num_rows))
    return max(1, min(_BATCH_ROWS, _BATCH_BYTES // per_row))


def _rows_failed(rows: RowBuilder, pf: pq.ParquetFile, uri: str, opts: ReaderOptions, group: int, first_row: int,
                 cause: str, message: str, *, skip: int = 0) -> None:
    """One error row per row of row group `group` from its `skip`-th on, ids where they read."""
    n = pf.metadata.row_group(group).num_rows
    ids: list[Any] = [None] * n
    if opts.id_column in pf.schema_arrow.names:
        try:
            ids = pf.read_row_group(group, columns=[opts.id_column]).column(0).to_pylist()
        except Exception:  # noqa: BLE001 - the ids are unreadable too: '<file>#<row>'
            pass
    for i in range(skip, n):
        rows.add(id=row_id(ids[i], uri, first_row + i, opts), source_uri=uri, source_row=first_row + i,
                 error=("read", cause, message))


def jsonl_records(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number from 0, record) of JSON lines, as the lines come: one per non-blank
    line (blank lines separate, and are counted, as text_lines counts them, so a row's
    number is the line an editor shows, less one); a line that is not a JSON object is a
    BadLine saying why."""
    for i, line in enumerate(lines):
        if not line.strip():
            continue  # blank separator lines are not documents
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield i, BadLine("not_utf8", f"line {i + 1} is not UTF-8 ({exc}); save the file as UTF-8")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield i, BadLine("bad_json", f"line {i + 1} is not valid JSON ({exc.__class__.__name__}: {exc}): "
                                         f"{_brief(text.strip(), 80)}")
            continue
        if not isinstance(record, dict):
            yield i, BadLine("bad_json", f"line {i + 1} is JSON {type(record).__name__}, not an object: {_brief(text.strip(), 80)}")
            continue
        yield i, record


def _kind(value: Any) -> str:
    """A value's type in the words of JSON and Parquet ("a number", "a list"...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object (a struct)"
    name = type(value).__name__
    return ("an " if name[:1] in "aeiou" else "a ") + name


def _brief(value: Any, limit: int = 40) -> str:
    """A value (a line's text, a field's value) as Python writes it, cut short for a
    message: enough to find it, never a whole document."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class BadLine:
    cause: str
    message: str
