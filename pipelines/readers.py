"""The reading layer of every job: listing input files (fsspec: local, file://, s3://...)
and reading one shard into rows.

A *shard* is the unit of work and of commit: one Parquet / JSONL / text file, or a
group of image files. Every row a shard yields has a stable id, its source (file
URI and row number), an optional reference text (a reference column, or the captions
file of an image folder), and either a payload (image bytes or text bytes) or a read
error, so a bad row is reported, never dropped. Generation jobs and fine-tuning read
through these same functions (fine-tuning takes the reference as its target).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .compression import CODECS, MissingCodecError, compression_of, decompress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
InputFormat = Literal["images", "parquet", "jsonl", "text_lines", "text_files"]

def _with_codecs(*names: str) -> tuple[str, ...]:
    return tuple(name + codec for name in names for codec in ("", *CODECS))


_TEXT_EXTENSIONS = _with_codecs(".txt")
_FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "images": IMAGE_EXTENSIONS,
    "parquet": (".parquet", ".parq", ".pq"),
    "jsonl": _with_codecs(".jsonl", ".json", ".ndjson"),
    "text_lines": _TEXT_EXTENSIONS,
    "text_files": _TEXT_EXTENSIONS,
}

# The schema of rows a shard yields (before decoding). `payload` holds image bytes or
# UTF-8-or-not text bytes; rows that failed to read carry error_* fields instead.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard_key", pa.string()),
        ("shard_rows", pa.int64()),
        ("row_index", pa.int64()),
        ("source_uri", pa.string()),
        ("source_row", pa.int64()),
        ("payload", pa.binary()),
        ("reference", pa.string()),
        ("error_stage", pa.string()),
        ("error_cause", pa.string()),
        ("error_message", pa.string()),
    ]
)


class InputListingError(ValueError):
    """input.uri names nothing readable."""


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


@dataclass(frozen=True)
class ReaderOptions:
    """How to turn a shard's files into rows.

    Attributes:
        format: see InputFormat.
        root: the input URI that ids are made relative to.
        input_column: parquet / jsonl: the field holding the input.
        id_column: parquet / jsonl: the field holding row ids.
        reference_column: parquet / jsonl: the field holding a reference (or target) text.
        captions_file: images: JSONL {file, caption}, file relative to root.
        extensions: file name endings that count as inputs (default per format).
        storage_options: fsspec options (credentials come from the environment).
    """

    format: InputFormat
    root: str
    input_column: str | None = None
    id_column: str | None = None
    reference_column: str | None = None
    captions_file: str | None = None
    extensions: tuple[str, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict)


def _protocol_prefix(uri: str, fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return "" if protocol in ("file", "local") else f"{protocol}://"


def input_extensions(opts: ReaderOptions) -> tuple[str, ...]:
    """The file name endings that count as inputs for these options."""
    return format_extensions(opts.format, opts.extensions)


def format_extensions(format: InputFormat, extensions: Sequence[str] = ()) -> tuple[str, ...]:
    """`extensions` when given, else the format's default endings (compressed ones included)."""
    return tuple(e.lower() for e in extensions) if extensions else _FORMAT_EXTENSIONS.get(format, ())


class InputListing(NamedTuple):
    """What listing an input URI found: input files (sorted full URIs), the files skipped
    because their name does not fit the format, and each input file's size in bytes."""

    files: list[str]
    ignored: list[str]
    sizes: dict[str, int]


def list_inputs(
    uri: str,
    *,
    format: InputFormat,
    extensions: Sequence[str] = (),
    storage_options: dict[str, Any] | None = None,
) -> InputListing:
    """Files under `uri` (a file, a folder/prefix, or a glob) that hold inputs, with sizes.

    The files of job outputs (_SUCCESS, _errors/, _commits/, Spark's _temporary/...) are
    not inputs and are passed over; hidden files (.DS_Store, .crc) and names without an
    input ending are skipped and reported in `ignored`. A local folder's symlinked
    folders are followed. A path that exists as written is a path even when it holds
    glob characters ("photos [2024]"). Sizes come with the listing (no request per file).
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    prefix = _protocol_prefix(uri, fs)
    wanted = format_extensions(format, extensions)
    if any(ch in path for ch in "*?[") and not fs.exists(path):
        found = {p: info for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}
        base = glob_base(path)
    elif fs.isdir(path):
        found = _walk_local(path) if _protocol_prefix(uri, fs) == "" else fs.find(path, detail=True)
        base = path.rstrip("/")
    elif fs.isfile(path):
        return InputListing([prefix + path], [], {prefix + path: int(fs.size(path) or 0)})
    else:
        raise InputListingError(
            f"input.uri {uri!r}: no such file, folder or prefix; check the path (and, for s3://, "
            "the bucket and credentials)"
        )
    files, ignored, sizes = [], [], {}
    for p in sorted(found):
        if p.endswith("/"):
            continue  # an object store's folder marker ("folder/", size 0), no file
        rel = posixpath.relpath(p, base) if base else p
        parts = rel.split("/")
        if any(_is_job_file(part) for part in parts):
            continue
        if any(part.startswith(".") for part in parts) or (wanted and not p.lower().endswith(wanted)):
            ignored.append(prefix + p)
            continue
        files.append(prefix + p)
        sizes[prefix + p] = int(found[p].get("size") or 0)
    return InputListing(files, ignored, sizes)


# Names in job outputs (ours, Spark's, Hadoop's, Parquet summary files): never inputs.
_JOB_FILES = {"_SUCCESS", "_errors", "_commits", "_staging", "_temporary", "_job.json", "_summary.json",
              "_gallery.html", "_lease.json", "_metadata", "_common_metadata"}


def _is_job_file(name: str) -> bool:
    return name in _JOB_FILES or name.startswith(("_committed_", "_started_"))


def glob_base(path: str) -> str:
    """The folder a glob searches: its path up to the folder before the first * ? [."""
    return path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]


def _walk_local(root: str) -> dict[str, dict[str, Any]]:
    """A local folder's files ({path: {size, type}}, as fsspec's find gives them), following
    symlinked folders once each (a link back up the tree is not walked again)."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in names:
            full = os.path.join(folder, name)
            try:
                found[full] = {"size": os.path.getsize(full), "type": "file"}
            except OSError:  # a dangling link: listed, so its read error says so
                found[full] = {"size": 0, "type": "file"}
    return found


def list_input_files(
    uri: str,
    *,
    format: InputFormat,
    extensions: Sequence[str] = (),
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """(files, ignored) of `list_inputs`: the input files and the skipped ones."""
    listing = list_inputs(uri, format=format, extensions=extensions, storage_options=storage_options)
    return listing.files, listing.ignored


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


def relative_id(file_uri: str, root: str) -> str:
    """A file's id: its path relative to the input root (a glob's fixed folder)."""
    def bare(u: str) -> str:
        return u.split("://", 1)[1] if "://" in u else u

    file_path, root_path = bare(file_uri), bare(root).rstrip("/")
    if file_path == root_path:
        return posixpath.basename(file_path)
    if any(ch in root_path for ch in "*?[") and not os.path.exists(root_path):
        root_path = glob_base(root_path)
    if file_path.startswith(root_path + "/"):
        return file_path[len(root_path) + 1 :]
    return file_path


class _Rows:
    """Accumulates rows of one shard in ROW_SCHEMA column order."""

    def __init__(self, shard: Shard, duplicates: Duplicates | None = None) -> None:
        self.shard = shard
        self.duplicates = duplicates or {}
        self.columns: dict[str, list[Any]] = {name: [] for name in ROW_SCHEMA.names}

    def add(
        self,
        *,
        id: str,
        source_uri: str,
        source_row: int,
        payload: bytes | None = None,
        reference: str | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> None:
        c = self.columns
        first = self.duplicates.get((source_uri, source_row))
        if first is not None and error is None:
            payload, error = None, ("read", "duplicate_id", first)
        c["id"].append(id)
        c["shard_key"].append(self.shard.key)
        c["row_index"].append(len(c["id"]) - 1)
        c["source_uri"].append(source_uri)
        c["source_row"].append(source_row)
        c["payload"].append(payload)
        c["reference"].append(reference)
        # "" (not None) means "no error": an all-null column would not survive Ray Data's
        # numpy batches as strings.
        stage, cause, message = error or ("", "", "")
        c["error_stage"].append(stage)
        c["error_cause"].append(cause)
        c["error_message"].append(message)

    def table(self) -> pa.Table:
        n = len(self.columns["id"])
        self.columns["shard_rows"] = [n] * n
        return pa.table(self.columns, schema=ROW_SCHEMA)


class CaptionsFileError(ValueError):
    """A captions file that cannot be read (the whole job stops: every row depends on it)."""


def _parse_captions(uri: str, storage_options: dict[str, Any]) -> dict[str, str]:
    fs, path = url_to_fs(uri, **storage_options)
    captions: dict[str, str] = {}
    try:
        with fs.open(path, "rt", encoding="utf-8") as fh:
            lines = list(fh)
    except FileNotFoundError:
        raise CaptionsFileError(f"captions_file {uri}: no such file; fix the path or remove the key") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, caption = str(row["file"]), row.get("caption")
        except (ValueError, KeyError, TypeError) as exc:
            raise CaptionsFileError(
                f"captions_file {uri} line {line_no}: expected a JSON object with 'file' and "
                f"'caption' ({type(exc).__name__}: {exc})"
            ) from None
        if caption is not None:
            captions[name] = str(caption)
    return captions


@functools.lru_cache(maxsize=4)
def _captions_cached(uri: str, options: str, version: str) -> dict[str, str]:
    return _parse_captions(uri, json.loads(options))


def _captions(uri: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """file (relative to the input root) -> caption; parsed once per worker process and
    file version (size and modification time), so a rewritten file is read again."""
    fs, path = url_to_fs(uri, **storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CaptionsFileError(f"captions_file {uri}: no such file; fix the path or remove the key") from None
    version = f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('ETag') or ''}"
    return _captions_cached(uri, json.dumps(storage_options, sort_keys=True), version)


def read_captions_file(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Parse a captions file (raises CaptionsFileError): the driver's check before any work."""
    return _parse_captions(uri, dict(storage_options or {}))


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Hugging Face datasets Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def _row_id(value: Any, uri: str, row: int, opts: ReaderOptions) -> str:
    """A row's id: its id column's value, or '<file relative to the root>#<row>' when it
    has none (null or blank)."""
    blank = value is None or (isinstance(value, str) and not value.strip())
    return f"{relative_id(uri, opts.root)}#{row}" if blank else str(value)


def _read_table_rows(
    rows: _Rows, uri: str, records: Iterable[dict[str, Any]], opts: ReaderOptions, *, first_row: int = 0
) -> None:
    for i, record in enumerate(records, start=first_row):
        rid = _row_id(record.get(opts.id_column) if opts.id_column else None, uri, i, opts)
        ref = record.get(opts.reference_column) if opts.reference_column else None
        ref = None if ref is None else str(ref)
        value = record.get(opts.input_column) if opts.input_column else None
        problem = _value_problem(record, value, opts)
        if problem is not None:
            rows.add(id=rid, source_uri=uri, source_row=i, reference=ref, error=("read", *problem))
            continue
        rows.add(id=rid, source_uri=uri, source_row=i, payload=_as_bytes(value), reference=ref)


def _value_problem(record: Mapping[str, Any], value: Any, opts: ReaderOptions) -> tuple[str, str] | None:
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
    if _as_bytes(value) is None:
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


def _read_parquet(rows: _Rows, fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReaderOptions) -> None:
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
    _read_table_rows(rows, uri, records, opts)


def _file_rows_failed(rows: _Rows, pf: pq.ParquetFile, uri: str, opts: ReaderOptions, cause: str, message: str) -> None:
    """One error row per row of a Parquet file that cannot be read, ids where they read."""
    n = pf.metadata.num_rows
    ids: list[Any] = [None] * n
    if opts.id_column in pf.schema_arrow.names:
        try:
            ids = pf.read(columns=[opts.id_column]).column(0).to_pylist()
        except Exception:  # noqa: BLE001 - the ids are unreadable too: '<file>#<row>'
            pass
    for i, value in enumerate(ids):
        rows.add(id=_row_id(value, uri, i, opts), source_uri=uri, source_row=i, error=("read", cause, message))


def _jsonl_records(data: bytes, uri: str) -> list[dict[str, Any] | _BadLine]:
    out: list[dict[str, Any] | _BadLine] = []
    for line in data.splitlines():
        if not line.strip():
            continue  # blank separator lines are not documents
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append(_BadLine("not_utf8", f"line is not UTF-8 ({exc}); save the file as UTF-8"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            out.append(_BadLine("bad_json", f"line is not valid JSON ({exc.__class__.__name__}: {exc})"))
            continue
        if not isinstance(record, dict):
            out.append(_BadLine("bad_json", f"line is JSON {type(record).__name__}, not an object"))
            continue
        out.append(record)
    return out


@dataclass
class _BadLine:
    cause: str
    message: str


def ids_can_repeat(opts: ReaderOptions) -> bool:
    """False when ids are unique by construction (file paths, '<file>#<row>'); True when
    they come from a column of the data (parquet / jsonl with an id column)."""
    return opts.format in ("parquet", "jsonl") and bool(opts.id_column)


# (source_uri, source_row) of a row -> why it is rejected: where its id first appears.
Duplicates = Mapping[tuple[str, int], str]


def read_shard_ids(shard: Shard, opts: ReaderOptions) -> pa.Table:
    """The id, source_uri and source_row of every row `read_shard` yields for `shard`,
    reading only the id column where the format allows (the duplicate-id pass)."""
    table = read_shard(shard, replace(opts, input_column=None, reference_column=None, captions_file=None))
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


def read_shard(shard: Shard, opts: ReaderOptions, *, duplicates: Duplicates | None = None) -> pa.Table:
    """All rows of `shard` as a ROW_SCHEMA table.

    A file that cannot be read at all (missing, not Parquet...) becomes one error
    row with id '<file>#file', so the failure is counted and visible in _errors.
    Rows named in `duplicates` become error rows with cause duplicate_id.
    """
    rows = _Rows(shard, duplicates or {})
    for uri in shard.files:
        fs, path = url_to_fs(uri, **opts.storage_options)
        try:
            _read_file(rows, fs, path, uri, opts)
        except _FileError as exc:
            rows.add(id=f"{relative_id(uri, opts.root)}#file", source_uri=uri, source_row=-1,
                     error=("read", exc.cause, f"file-level error: {uri}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - any failure to read a file is reported as a row
            cause = "missing_codec" if isinstance(exc, MissingCodecError) else "unreadable_file"
            rows.add(
                id=f"{relative_id(uri, opts.root)}#file",
                source_uri=uri,
                source_row=-1,
                error=("read", cause, f"file-level error: cannot read the file {uri} "
                       f"({type(exc).__name__}: {exc}); how many rows it holds is unknown"),
            )
    return rows.table()


def _read_file(rows: _Rows, fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReaderOptions) -> None:
    if opts.format == "images" or opts.format == "text_files":
        rid = relative_id(uri, opts.root)
        reference = _captions(opts.captions_file, opts.storage_options).get(rid) if opts.captions_file else None
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
        _read_parquet(rows, fs, path, uri, opts)
        return
    data, broken = _read_text(fs, path, uri)
    base = relative_id(uri, opts.root)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _FileError("not_utf8", "the file is UTF-16 text; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if broken:
        data = data[: data.rfind(b"\n") + 1]  # the last line read may be cut short
    if opts.format == "text_lines":
        # Ids are line numbers; blank lines (paragraph breaks) hold no text and are skipped.
        for i, line in enumerate(data.splitlines()):
            if line.strip():
                rows.add(id=f"{base}#{i}", source_uri=uri, source_row=i, payload=line)
    else:
        # jsonl: parse errors are per line, so one bad line does not lose the file
        for i, record in enumerate(_jsonl_records(data, uri)):
            if isinstance(record, _BadLine):
                rows.add(id=f"{base}#{i}", source_uri=uri, source_row=i, error=("read", record.cause, record.message))
            else:
                _read_table_rows(rows, uri, [record], opts, first_row=i)
    if broken:
        raise _FileError("truncated_file", f"{broken}; the rows above the break were read, the rest are lost")


def _read_text(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> tuple[bytes, str | None]:
    """A text file's bytes, decompressed by its name's codec, and where it broke (or None).

    Nothing decoded at all is no break but a file that is not what its name says.
    """
    codec = compression_of(uri)
    with fs.open(path, "rb") as f:
        raw = f.read()
    data, broken = decompress(raw, codec)
    if broken and not data and raw:
        raise _FileError("unreadable_file", f"the file is not {codec} data, as its name says ({broken})")
    return data, broken


class _FileError(Exception):
    """A file-level failure with its cause (read_shard adds the file's error row)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
