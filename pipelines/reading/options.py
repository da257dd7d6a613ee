"""How a job reads its input: the formats, their file name endings, and ReaderOptions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .compression import CODECS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
InputFormat = Literal["images", "parquet", "jsonl", "text_lines", "text_files", "webdataset"]
# webdataset: the member extensions that hold a sample's image, in order of preference.
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

def _with_codecs(*names: str) -> tuple[str, ...]:
    return tuple(name + codec for name in names for codec in ("", *CODECS))


_TEXT_EXTENSIONS = _with_codecs(".txt")
_FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "images": IMAGE_EXTENSIONS,
    "parquet": (".parquet", ".parq", ".pq"),
    "jsonl": _with_codecs(".jsonl", ".json", ".ndjson"),
    "text_lines": _TEXT_EXTENSIONS,
    "text_files": _TEXT_EXTENSIONS,
    # tarfile reads gzip / bz2 / xz tars itself (".tar.bz2", ".tar.xz" by input.extensions)
    "webdataset": (".tar", ".tar.gz", ".tgz"),
}


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
        image_extensions: webdataset: member extensions that hold the image.
        payloads: False reads ids and references only (the duplicate-id pass).
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
    image_extensions: tuple[str, ...] = WEBDATASET_IMAGE_EXTENSIONS
    payloads: bool = True



def input_extensions(opts: ReaderOptions) -> tuple[str, ...]:
    """The file name endings that count as inputs for these options."""
    return format_extensions(opts.format, opts.extensions)


def format_extensions(format: InputFormat, extensions: Sequence[str] = ()) -> tuple[str, ...]:
    """`extensions` when given, else the format's default endings (compressed ones included)."""
    return tuple(e.lower() for e in extensions) if extensions else _FORMAT_EXTENSIONS.get(format, ())
