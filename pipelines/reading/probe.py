"""What an input file looks like, read from its first bytes: the driver's checks before a job.

A job that reads tar archives as images, or Parquet as JSON lines, fails every row; a
spec whose input_column is not in the data fails every row too. Both are found here,
on the driver, from the first input file (a few kilobytes, or a Parquet footer), and
reported as spec problems before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .compression import Decompressed, MissingCodecError, compression_of
from .options import InputFormat, ReaderOptions
from .webdataset import sample_members

# Bytes read from the start of a file to tell what it is (a tar header ends at 512).
_HEAD_BYTES = 4096
# JSONL: the lines whose keys stand for the file's columns (a key missing from every
# one of them is reported; optional keys present in some rows are not), read from at
# most the first 4 MiB (50 long documents).
_JSONL_LINES = 50
_JSONL_BYTES = 4 * 1024**2
_RAW_FOR_HEAD = 1024**2

_IMAGE_KINDS = {"JPEG image", "PNG image", "GIF image", "WebP image", "BMP image", "TIFF image"}


def sniff(head: bytes) -> str:
    """What these leading bytes are, in words ("a tar archive", "JSON text", ...)."""
    signatures = (
        (b"\xff\xd8\xff", "JPEG image"), (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"GIF8", "GIF image"),
        (b"BM", "BMP image"), (b"II*\x00", "TIFF image"), (b"MM\x00*", "TIFF image"),
        (b"PAR1", "Parquet file"), (b"\x1f\x8b", "gzip-compressed file"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed file"), (b"BZh", "bzip2-compressed file"),
        (b"\xfd7zXZ\x00", "xz-compressed file"), (b"PK\x03\x04", "zip archive"), (b"%PDF", "PDF document"),
    )
    if len(head) >= 1024 and not head.strip(b"\x00"):
        # A tar of no members is its two zero end-of-archive blocks, padded (10 KB as
        # tarfile and webdataset's TarWriter write it; img2dataset writes one when every
        # download of a shard failed).
        return "an empty tar archive"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP image"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    for magic, kind in signatures:
        if head.startswith(magic):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the head
            # Latin-1 or Windows-1252 text reads as text in Latin-1: its rows say not_utf8
            # one by one; bytes that are mostly control characters are binary.
            latin = head.decode("latin-1")
            controls = sum(1 for ch in latin if ord(ch) < 32 and ch not in "\t\n\r\f")
            return "binary data" if "\x00" in latin or controls > len(latin) // 20 else "non-UTF-8 text"
        text = head[: exc.start].decode("utf-8")
    # NULs and other control characters do not occur in text files (UTF-8 accepts them).
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\b")
    if "\x00" in text or controls > len(text) // 10:
        return "binary data"
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        return "empty text" if head else "an empty file"
    if stripped[0] in "{[":
        return "JSON text"
    return "text"


def with_article(kind: str) -> str:
    """'a tar archive', 'an xz-compressed file', 'JSON text': a sniffed kind in a sentence."""
    if kind.startswith("an ") or kind.endswith("text") or kind == "binary data":
        return kind  # "JSON text", "UTF-16 text", "binary data": no article
    return ("an " if kind[0] in "AEIOUaeiox" else "a ") + kind


def format_problem(kind: str, format: InputFormat) -> str | None:
    """Why a file of this kind is not an input of `format`, or None when it fits."""
    fits = {
        "images": kind in _IMAGE_KINDS,
        "parquet": kind == "Parquet file",
        "jsonl": kind in ("JSON text", "empty text", "an empty file", "non-UTF-8 text"),
        "text_lines": kind in ("text", "JSON text", "empty text", "an empty file", "non-UTF-8 text"),
        "text_files": kind in ("text", "JSON text", "empty text", "an empty file", "non-UTF-8 text"),
        "webdataset": kind in ("tar archive", "gzip-compressed file", "bzip2-compressed file", "xz-compressed file"),
    }[format]
    if fits:
        return None
    hint = {
        "UTF-16 text": "convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)",
        "tar archive": "tar shards (WebDataset, img2dataset) are read with input.format=webdataset",
        "Parquet file": "use input.format=parquet",
        "JSON text": "use input.format=jsonl",
        "text": "use input.format=text_lines or text_files",
    }.get(kind)
    if kind in _IMAGE_KINDS:
        hint = "use input.format=images"
    return f"looks like {with_article(kind)}, not {format} input" + (f"; {hint}" if hint else "")


def read_head(uri: str, storage_options: dict[str, Any] | None = None, *, decompress: bool = True,
              size: int = _HEAD_BYTES) -> bytes:
    """The first `size` bytes of a file (decompressed by its name's codec when `decompress`).

    Raises MissingCodecError for a codec this Python lacks, OSError when the file
    cannot be read, and ValueError when its compressed data is corrupt from the start.
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    codec = compression_of(uri) if decompress else None
    head = bytearray()
    with fs.open(path, "rb") as f:
        # Compressed: raw bytes in blocks large enough for whole blocks (zstd's are up to
        # 128 KiB), read until `size` bytes decode or the data ends.
        text = Decompressed(f, codec, chunk=size if codec is None else max(size, _RAW_FOR_HEAD))
        for chunk in text:
            head += chunk
            if len(head) >= size:
                break
    if text.broken and not head:
        raise ValueError(text.broken)  # nothing decodes: not a truncation of a long file
    return bytes(head[:size])


# The files checked: a file that cannot be read becomes an error row when the job runs
# (as any later file would); a format or column problem of a readable file is the spec's.
_FILES_CHECKED = 3


def check_input_files(files: Sequence[str], opts: ReaderOptions) -> list[str]:
    """Problems (each naming its YAML key) with reading the input as `opts` says, from
    the first readable, non-empty one of the first files: its format, and the columns
    the spec names. Empty when it fits (or none of them could be read or holds rows)."""
    wrong_format: list[str] = []
    for uri in files[:_FILES_CHECKED]:
        try:
            head = read_head(uri, opts.storage_options, decompress=opts.format not in ("images", "parquet", "webdataset"))
        except MissingCodecError as exc:
            return [f"input.uri: {exc}"]  # every such file is the same
        except (OSError, EOFError, ValueError):
            continue  # this file's own error row says why, when the job runs
        kind = sniff(head)
        if kind in ("an empty file", "empty text", "an empty tar archive"):
            continue
        problem = format_problem(kind, opts.format)
        if problem:
            # One odd file first (a tar that is not one, a stray text file) is that file's
            # error row when the job runs, if a later file fits; the spec is wrong when
            # none of the files looked at does.
            wrong_format = wrong_format or [f"input.format: {opts.format}, but the input file {uri} {problem}"]
            continue
        return _check_file(uri, kind, opts)
    return wrong_format


def _check_file(uri: str, kind: str, opts: ReaderOptions) -> list[str]:
    problem = format_problem(kind, opts.format)
    if problem:
        return [f"input.format: {opts.format}, but the input file {uri} {problem}"]
    named = [(key, col) for key, col in (("input_column", opts.input_column), ("id_column", opts.id_column),
                                          ("reference_column", opts.reference_column)) if col]
    if opts.format == "parquet":
        fs, path = url_to_fs(uri, **opts.storage_options)
        try:
            with fs.open(path, "rb") as f:
                columns = pq.ParquetFile(f).schema_arrow.names
        except (OSError, ValueError):
            return []  # no footer: the file's error row says so
        return _missing(named, columns, uri, "its columns")
    if opts.format == "webdataset":
        return _check_first_sample(uri, opts)
    if opts.format == "jsonl":
        keys = _jsonl_keys(uri, opts.storage_options)
        if keys is None:
            return [
                f"input.format: jsonl, but the first lines of {uri} hold no JSON object: JSON Lines is one "
                "object per line, and a pretty-printed JSON document or array is not (convert it, e.g. "
                "jq -c '.[]' in.json > out.jsonl)"
            ]
        return _missing(named, keys, uri, f"keys of its first {_JSONL_LINES} lines")
    return []


def _jsonl_keys(uri: str, storage_options: dict[str, Any]) -> list[str] | None:
    """The keys of the JSON objects among a file's first lines (None: no object there)."""
    head = read_head(uri, storage_options, size=_JSONL_BYTES)
    lines = [line for line in head.split(b"\n") if line.strip()]
    if len(head) == _JSONL_BYTES:
        lines = lines[:-1]  # the last piece may be cut short
    keys: dict[str, None] = {}
    parsed = 0
    for line in lines[:_JSONL_LINES]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            parsed += 1
            keys.update(dict.fromkeys(record))
    return list(keys) if parsed else None


def _missing(named: Sequence[tuple[str, str]], columns: Sequence[str], uri: str, what: str) -> list[str]:
    present = set(columns)
    return [
        f"input.{key}: {col!r} is not in the input file {uri} ({what}: "
        f"{', '.join(columns) if columns else 'none'}); set input.{key} to one of them"
        + ("" if key == "input_column" else " or to null")
        for key, col in named if col not in present
    ]


# webdataset: the samples whose members stand for the shard's (a member missing from every
# one of them is reported), read from the start of the first tar.
_WEBDATASET_SAMPLES = 20


def _check_first_sample(uri: str, opts: ReaderOptions) -> list[str]:
    """The members and json fields the spec names, against the first samples of a tar."""
    try:
        members, fields = sample_members(uri, opts, samples=_WEBDATASET_SAMPLES)
    except Exception:  # noqa: BLE001 - an unreadable tar is its own error row when the job runs
        return []
    if not members:
        return []
    problems = []
    if not set(opts.image_extensions) & members:
        problems.append(f"input.image_extensions: none of {list(opts.image_extensions)} is a member of the first "
                        f"samples of {uri} (their members: {', '.join(sorted(members))}); set it to the image's "
                        "extension")
    for key, name in (("reference_column", opts.reference_column), ("id_column", opts.id_column)):
        if not name:
            continue
        ext, _, field = name.partition(".")
        if ext not in members:
            problems.append(f"input.{key}: {name!r} names the member {ext!r}, which the first samples of {uri} do "
                            f"not have (their members: {', '.join(sorted(members))}); set it to one of them")
        elif field and field.split(".")[0] not in fields.get(ext, set()):
            have = ", ".join(sorted(fields.get(ext, set()))) or "none"
            problems.append(f"input.{key}: {name!r}: the {ext} members of the first samples of {uri} have no field "
                            f"{field.split('.')[0]!r} (their fields: {have}); set it to one of them")
    return problems
