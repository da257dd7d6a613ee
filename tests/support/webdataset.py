"""WebDataset tar shards as img2dataset writes them, for the reading tests."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import fsspec


def tar_bytes(samples: list[dict[str, Any]], *, folder: str = "") -> bytes:
    """A tar of samples: each dict maps a member extension (jpg, txt, json...) to bytes, str
    or a JSON-able dict, plus "__key__"; members are written in sample order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                data = value if isinstance(value, bytes) else (
                    json.dumps(value).encode() if isinstance(value, dict) else str(value).encode())
                info = tarfile.TarInfo(f"{folder}{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(uri: str, samples: list[dict[str, Any]], *, folder: str = "") -> bytes:
    data = tar_bytes(samples, folder=folder)
    with fsspec.open(uri, "wb") as f:
        f.write(data)
    return data
