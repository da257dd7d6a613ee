"""Rows of tabular inputs: Parquet files and JSON lines, with a per-row problem for each
input that cannot be read (a missing field, a null, a struct without bytes, a bad id)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from .listing import relative_id
from .options import ReaderOptions
from .rows import RowBuilder


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
        return "wrong_type", f"field '{col}' holds a {type(value).__name__}, not bytes or text"
    if opts.id_column:
        rid = record.get(opts.id_column)
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            return "missing_id", (
                f"row has no value in the id column '{opts.id_column}': ids are how output rows are joined back; "
                "fill it in the input, or unset input.id_column to use '<file>#<row>' ids"
            )
        if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
            return "bad_id", f"the id column '{opts.id_column}' holds a {type(rid).__name__} ({rid!r}); ids are text or numbers"
    return None


def read_parquet(rows: RowBuilder, fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReaderOptions) -> None:
    """A Parquet file's rows. A file whose footer reads but whose rows do not (a column
    the spec names is not there, a corrupt row group) fails as a whole, but the footer
    says how many rows it holds: each becomes an error row (with its id when the id
    column reads), so the counts say what was lost. No footer: one '#file' error row."""
    wanted = list(dict.fromkeys(c for c in (opts.input_column, opts.id_column, opts.reference_column) if c))
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        n = pf.metadata.num_rows
        missing = [c for c in wanted if c not in names]
        if not missing:
            try:
                records = pf.read(columns=wanted).to_pylist()
            except Exception as exc:  # noqa: BLE001 - reported per row below
                _file_rows_failed(rows, pf, uri, opts, "unreadable_file",
                                  f"file-level error: cannot read the rows of {uri} ({type(exc).__name__}: {exc}), "
                                  f"so none of its {n} rows can be read")
                return
        else:
            _file_rows_failed(rows, pf, uri, opts, "missing_column",
                              f"file-level error: {uri} has no column {', '.join(map(repr, missing))} (its columns: "
                              f"{', '.join(names)}), so none of its {n} rows can be read; set the spec's "
                              "input_column / id_column / reference_column to columns the file has")
            return
    read_records(rows, uri, records, opts)


def _file_rows_failed(rows: RowBuilder, pf: pq.ParquetFile, uri: str, opts: ReaderOptions, cause: str, message: str) -> None:
    """One error row per row of a Parquet file that cannot be read, ids where they read."""
    n = pf.metadata.num_rows
    ids: list[Any] = [None] * n
    if opts.id_column in pf.schema_arrow.names:
        try:
            ids = pf.read(columns=[opts.id_column]).column(0).to_pylist()
        except Exception:  # noqa: BLE001 - the ids are unreadable too: '<file>#<row>'
            pass
    for i, value in enumerate(ids):
        rows.add(id=row_id(value, uri, i, opts), source_uri=uri, source_row=i, error=("read", cause, message))


def jsonl_records(data: bytes, uri: str) -> list[dict[str, Any] | BadLine]:
    out: list[dict[str, Any] | BadLine] = []
    for line in data.splitlines():
        if not line.strip():
            continue  # blank separator lines are not documents
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append(BadLine("not_utf8", f"line is not UTF-8 ({exc}); save the file as UTF-8"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            out.append(BadLine("bad_json", f"line is not valid JSON ({exc.__class__.__name__}: {exc})"))
            continue
        if not isinstance(record, dict):
            out.append(BadLine("bad_json", f"line is JSON {type(record).__name__}, not an object"))
            continue
        out.append(record)
    return out


@dataclass
class BadLine:
    cause: str
    message: str
