"""The captions file of an image folder: JSONL of {file, caption}, the true text of each picture."""

from __future__ import annotations

import functools
import json
from typing import Any

from fsspec.core import url_to_fs


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


def captions_for(uri: str, storage_options: dict[str, Any]) -> dict[str, str]:
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
