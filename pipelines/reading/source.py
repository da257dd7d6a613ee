"""One vocabulary for inputs, shared by every job spec (generation and fine-tuning).

    uri            a file, a folder/prefix, a glob, or braces (shard-{000..099}.tar); local, file://, s3://
    format         images | parquet | jsonl | text_lines | text_files | webdataset
    input_column   parquet / jsonl: the column holding the model input (image bytes or text)
    id_column      parquet / jsonl: the column holding row ids
    captions_file  images: JSONL of {file, caption}: the true text of each picture
    extensions     which file name endings count as inputs

Job specs add their own keys on top (reference_column, target_column, files_per_shard,
max_rows). Renamed keys keep working for one release: `image_column` and
`text_column` (now `input_column`), format `image_folder` (now `images`); each use
logs one deprecation line naming the new key.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, model_validator

from ..specs import StrictModel, path_field
from .options import InputFormat, ReaderOptions

log = logging.getLogger(__name__)

# old key or value -> new one; removed in the release after 0.2.
_RENAMED_KEYS = {"image_column": "input_column", "text_column": "input_column"}
_RENAMED_FORMATS = {"image_folder": "images"}


def _upgrade(data: Any, *, where: str) -> Any:
    """Rewrite deprecated keys and format names, logging each once per spec load."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in _RENAMED_KEYS.items():
        if old in data:
            value = data.pop(old)
            if new in data and data[new] != value:
                # Both given and different: keep both so validation reports the clash.
                data[old] = value
                continue
            data[new] = value
            log.warning("%s.%s is deprecated; it is now %s.%s (same meaning)", where, old, where, new)
    fmt = data.get("format")
    if isinstance(fmt, str) and fmt in _RENAMED_FORMATS:
        data["format"] = _RENAMED_FORMATS[fmt]
        log.warning(
            "%s.format: %r is deprecated; it is now %r (same meaning)", where, fmt, _RENAMED_FORMATS[fmt]
        )
    return data


class InputSource(StrictModel):
    """Where input rows come from and how to read them (shared by all jobs)."""

    uri: str = path_field(
        description="a file, a folder/prefix, a glob (*.parquet), or a brace pattern as WebDataset writes "
        "shard lists (shards-{00000..00099}.tar, {train,val}/*.tar: every path named must exist); local, "
        "file:// or s3:// (any fsspec); "
        "a relative path in a spec file is relative to that file's folder",
        min_length=1,
    )
    format: InputFormat = Field(
        description="images: one picture per file (jpg, png, webp, bmp, gif, tiff); parquet / jsonl: "
        "one row per record, the input in input_column; text_lines: one text per line; "
        "text_files: one text per file; webdataset: tar shards of samples (img2dataset's layout: <key>.jpg, <key>.txt, <key>.json), one row per sample"
    )
    input_column: str | None = Field(
        None,
        description="parquet / jsonl: the column holding the input (encoded image bytes, or a "
        "{bytes, path} struct as Hugging Face datasets store images; or text); default per job",
    )
    id_column: str | None = Field(
        None,
        description="parquet / jsonl: the column holding row ids; when unset an id is "
        "'<file relative to uri>#<row>' (images, text_files: the file path relative to uri); "
        "webdataset: json.<field> names a field of the sample's json member (default: the sample key)",
    )
    image_extensions: list[str] | None = Field(
        None,
        description="webdataset: the member extensions that hold a sample's image, in order of "
        "preference (default jpg, jpeg, png, webp)",
    )
    captions_file: str | None = path_field(
        None,
        description="images: JSONL of {file, caption} with file relative to uri: the true text of "
        "each picture (references for generation, targets for fine-tuning)",
    )
    extensions: list[str] | None = Field(
        None,
        description="file name endings that count as inputs (default per format: image types; "
        ".parquet; .jsonl, .json, .ndjson and .txt, each also .gz, .zst, .bz2, .xz)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return _upgrade(data, where="input")

    def source_problems(self, *, key: str, modality: str | None = None) -> list[str]:
        """Cross-field problems, each naming its YAML key under `key`."""
        problems = []
        table_like = self.format in ("parquet", "jsonl")
        if self.format == "webdataset" and self.id_column and not self.id_column.startswith("json."):
            problems.append(f"{key}.id_column: {self.id_column!r}; with format webdataset an id is the sample key, "
                            "or json.<field> for a field of its json member")
        if self.image_extensions is not None and self.format != "webdataset":
            problems.append(f"{key}.image_extensions: only used with format webdataset (format is {self.format}); "
                            "remove it (input.extensions names the files that count as inputs)")
        if not table_like and self.format != "webdataset" and self.id_column:
            problems.append(
                f"{key}.id_column: only used with format parquet or jsonl (format is {self.format}; "
                "a file's id is its path); remove it or change "
                f"{key}.format"
            )
        if table_like and not self.input_column:
            problems.append(f"{key}.input_column: required with format {self.format}; name the column "
                            "that holds the input")
        if self.captions_file and self.format != "images":
            problems.append(
                f"{key}.captions_file: only used with format images (format is {self.format}); "
                f"remove it or set {key}.format=images"
            )
        if modality == "image" and self.format in ("text_lines", "text_files"):
            problems.append(f"{key}.format: {self.format} holds texts, but this job reads images; "
                            "use images, parquet or jsonl")
        if modality == "text" and self.format in ("images", "webdataset"):
            what = "images" if self.format == "images" else "webdataset (tar shards of images)"
            problems.append(f"{key}.format: {what}, but this job reads texts; use jsonl, parquet, "
                            "text_lines or text_files")
        return problems

    def reader_options(self, *, reference_column: str | None = None) -> ReaderOptions:
        """What the reading layer needs (paths as given; the plan makes them absolute)."""
        return ReaderOptions(
            format=self.format,
            root=self.uri,
            input_column=self.input_column if self.format in ("parquet", "jsonl") else None,
            id_column=self.id_column,
            reference_column=reference_column,
            captions_file=self.captions_file,
            extensions=tuple(self.extensions or ()),
            **({"image_extensions": tuple(e.lower().lstrip(".") for e in self.image_extensions)}
               if self.image_extensions else {}),
        )
