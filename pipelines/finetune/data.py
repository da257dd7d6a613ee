"""Reading (input, target) pairs with Ray Data, lazily: rows stream into the workers.

Every dataset comes out with three columns: `id` (string), `source` (image bytes
or text) and `target` (text), whatever the input format called them.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import ray.data

from ..readers import IMAGE_EXTENSIONS
from ..uris import is_remote
from .spec import DataSource


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem or None, path) for Ray Data readers.

    Remote URIs go through fsspec (s3fs honours AWS_* variables and
    AWS_ENDPOINT_URL, as every other part of this project does).
    """
    if not is_remote(uri):
        return None, uri.removeprefix("file://")
    from fsspec.core import url_to_fs
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = url_to_fs(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def _rename(batch: dict[str, Any], *, id_column: str, input_column: str, target_column: str) -> dict[str, Any]:
    return {
        "id": [str(x) for x in batch[id_column]],
        "source": batch[input_column],
        "target": batch[target_column],
    }


def read_pairs(source: DataSource, *, key: str) -> ray.data.Dataset:
    """A lazy Ray Dataset of {id, source, target} for one DataSource.

    `key` is the spec key (data.train...), named in errors.
    """
    filesystem, path = arrow_filesystem(source.uri)
    if source.format == "parquet":
        ds = ray.data.read_parquet(
            path,
            filesystem=filesystem,
            columns=[source.id_column, source.input_column, source.target_column],
            file_extensions=["parquet"],
        )
    elif source.format == "jsonl":
        ds = ray.data.read_json(path, filesystem=filesystem, lines=True, file_extensions=["jsonl", "json"])
    else:
        ds = _read_image_folder(source, filesystem=filesystem, path=path, key=key)
    if source.format != "image_folder":
        ds = ds.map_batches(
            _rename,
            fn_kwargs={
                "id_column": source.id_column,
                "input_column": source.input_column,
                "target_column": source.target_column,
            },
            batch_format="pandas" if source.format == "jsonl" else "numpy",
        )
    if source.max_rows is not None:
        ds = ds.limit(source.max_rows)
    return ds


def _read_image_folder(source: DataSource, *, filesystem: Any, path: str, key: str) -> ray.data.Dataset:
    """Images under the folder, joined to their captions from a JSONL file {file, caption}.

    The captions file is read on the driver (one short line per image); the
    image bytes are read by Ray Data tasks.
    """
    import fsspec

    captions_uri = source.captions_file or posixpath.join(source.uri.rstrip("/"), "captions.jsonl")
    captions: dict[str, str] = {}
    with fsspec.open(captions_uri, "rt") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[str(row["file"])] = row.get("caption")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{key}.captions_file {captions_uri} line {line_no}: expected a JSON object with "
                    f"'file' and 'caption' ({exc})"
                ) from None
    root = path.rstrip("/")
    ds = ray.data.read_binary_files(
        path, filesystem=filesystem, include_paths=True, file_extensions=[s[1:] for s in IMAGE_EXTENSIONS]
    )
    captions_ref = ray.put(captions)

    def attach(batch: dict[str, Any]) -> dict[str, Any]:
        table = ray.get(captions_ref)
        rel = [str(p)[len(root) :].lstrip("/") if str(p).startswith(root) else str(p) for p in batch["path"]]
        # A picture without a caption is a bad row (empty target): counted, not dropped silently.
        return {"id": rel, "source": batch["bytes"], "target": [table.get(r) or "" for r in rel]}

    return ds.map_batches(attach, batch_format="numpy")
