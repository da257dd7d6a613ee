"""Local-or-remote URI helpers shared by the generation and fine-tuning pipelines."""

from __future__ import annotations

import os


def is_remote(uri: str) -> bool:
    """True for URIs with a non-local scheme (s3://, gs://...)."""
    return "://" in uri and not uri.startswith("file://")


def absolute_uri(uri: str) -> str:
    """Local paths made absolute (file:// stripped); URIs with a scheme unchanged.

    Ray workers do not share the driver's working directory (ray job submit runs
    the driver in an unpacked working_dir), so every local path that travels to a
    worker is made absolute on the driver.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))
