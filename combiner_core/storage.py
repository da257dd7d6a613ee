"""Storage, public to combiner_core's users and to pipelines: URIs (local, file://,
s3://, hub ids), fsspec filesystems, credentials errors said plainly, and copies of
remote checkpoints.

Credentials and endpoints come from the environment (AWS_* variables, instance
roles) or from `storage_options`, never from a saved file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .errors import CheckpointNotFoundError, CombinerError

_LOCAL_PROTOCOLS = {"file", "local"}
# A hub id: "name" or "org/name" (letters, digits, '.', '-', '_').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_remote(uri: str) -> bool:
    """True for URIs with a non-local scheme (s3://, gs://, memory://, ...)."""
    return "://" in uri and uri.split("://", 1)[0] not in _LOCAL_PROTOCOLS


def strip_file_scheme(uri: str) -> str:
    """`file:///x` -> `/x`; anything else unchanged."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def local_path(uri: str) -> Path:
    """The local path a non-remote URI names (file:// stripped, ~ expanded)."""
    return Path(strip_file_scheme(uri)).expanduser()


def looks_like_path(uri: str) -> bool:
    """True when `uri` is written as a local path (/, ., ~ or file://), not a hub id."""
    return uri.startswith(("/", ".", "~", "file://")) or not _HUB_ID.match(uri)


def is_hub_id(uri: str) -> bool:
    """True for a bare "org/name" that is not a local path here.

    "models/my-captionr" where a folder models/ exists is a path (a typo of a local
    folder is reported as one, not looked up on the hub).
    """
    if is_remote(uri) or looks_like_path(uri):
        return False
    path = local_path(uri)
    return not path.exists() and not ("/" in uri and path.parent.is_dir())


def absolute_uri(uri: str, *, hub_ids: bool = False) -> str:
    """Local paths made absolute (file:// stripped); remote URIs unchanged.

    With `hub_ids` (model URIs), a bare "org/name" that does not exist here is a
    hub id and stays as it is; data URIs (inputs, outputs) are always paths.
    Ray workers do not share the driver's working directory (`ray job submit` runs
    the driver in an unpacked working_dir), so every local path that travels to a
    worker is made absolute on the driver.
    """
    if is_remote(uri) or (hub_ids and is_hub_id(uri)):
        return uri
    return os.path.abspath(local_path(uri))


def normal_uri(uri: str, *, hub_ids: bool = False) -> str:
    """One spelling of a location: absolute, no '.', '..', '//' or trailing '/' (a hub id
    as it is, with `hub_ids`). Equal results name the same files."""
    if hub_ids and is_hub_id(uri):
        return uri
    if is_remote(uri):
        scheme, path = uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + path).lstrip('/')}"
    return absolute_uri(uri)  # os.path.abspath normalizes


class StorageAccessError(CombinerError, PermissionError):
    """Object storage refused a request: missing or wrong credentials, or no access."""


# botocore's credential errors, by name: combiner_core does not import botocore.
_CREDENTIAL_ERRORS = {
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
}


def storage_error(uri: str, exc: BaseException, *, action: str = "read") -> StorageAccessError | None:
    """A StorageAccessError explaining `exc` if it is a credentials or access failure, else None.

    The message names the URI and where credentials come from; it never repeats a
    credential (only the names of the variables that hold them).
    """
    names = {type(e).__name__ for e in _chain(exc)}
    codes = {str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) for e in _chain(exc)}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint} from AWS_ENDPOINT_URL)" if endpoint else ""
    help_text = (
        "Credentials come from the environment (AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or "
        "AWS_PROFILE), ~/.aws, or the node's instance role; on a Ray cluster every node needs "
        "them. For an S3-compatible server (MinIO, Ceph...) set AWS_ENDPOINT_URL."
    )
    if names & _CREDENTIAL_ERRORS or codes & _CREDENTIAL_ERRORS:
        return StorageAccessError(f"cannot {action} {uri}{where}: no valid credentials were found. {help_text}")
    if any(isinstance(e, PermissionError) for e in _chain(exc)) or codes & {"AccessDenied", "403"}:
        return StorageAccessError(
            f"cannot {action} {uri}{where}: access denied. Check that these credentials may "
            f"{action} it. {help_text}"
        )
    return None


@contextlib.contextmanager
def storage_access(uri: str, *, action: str = "read") -> Iterator[None]:
    """Turn a credentials / access failure inside the block into one StorageAccessError."""
    try:
        yield
    except StorageAccessError:
        raise
    except Exception as exc:
        err = storage_error(uri, exc, action=action)
        if err is None:
            raise
        raise err from None


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def get_filesystem(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for `uri`."""
    return url_to_fs(uri, **(storage_options or {}))


def cache_root() -> Path:
    """Folder for local copies of remote checkpoints (COMBINER_CACHE_DIR overrides)."""
    root = os.environ.get("COMBINER_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "combiner"
    )
    return Path(root)


def fetch_dir(
    uri: str, *, storage_options: dict[str, Any] | None = None, skip_suffixes: tuple[str, ...] = ()
) -> Path:
    """A local folder holding the files under the remote prefix `uri`.

    The copy is keyed by the URI and by the listing (names, sizes, ETags), so a
    checkpoint overwritten in place is fetched again, and a second load of an
    unchanged one (another actor on the same node) reads the cached copy. The copy
    is written to a temporary folder and renamed into place, so concurrent loaders
    never see a half-written folder. Files ending in `skip_suffixes` are not
    fetched (a tokenizer-only load skips gigabytes of weights).
    """
    fs, root = get_filesystem(uri, storage_options)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        listing = {}
    if skip_suffixes:
        listing = {name: info for name, info in listing.items() if not name.endswith(skip_suffixes)}
    if not listing:
        raise CheckpointNotFoundError(
            f"no files under {uri}: check the URI and that your credentials can list it "
            "(AWS_* variables or an instance role; AWS_ENDPOINT_URL for S3-compatible servers)"
        )
    fingerprint = hashlib.sha256(
        json.dumps(
            sorted(
                (
                    name,
                    info.get("size"),
                    str(info.get("ETag") or info.get("etag") or info.get("mtime") or ""),
                )
                for name, info in listing.items()
            )
        ).encode()
    ).hexdigest()[:16]
    uri_key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_root() / "checkpoints" / f"{uri_key}-{fingerprint}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        for name in listing:
            rel = name[len(root) :].lstrip("/")
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(dest))
        (staging / ".complete").write_text(uri)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished the same fetch first; its copy is identical.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def upload_dir(
    local_dir: str | Path,
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    last: tuple[str, ...] = (),
) -> None:
    """Copy every file under `local_dir` to the prefix `uri`; files named in `last` go last.

    Writing a marker file (the manifest) last means a reader that finds it knows
    every other file is already there.
    """
    fs, root = get_filesystem(uri, storage_options)
    root = root.rstrip("/")
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(local_dir).as_posix() in last)
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        target = f"{root}/{rel}"
        if not is_remote(uri):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        fs.put_file(str(path), target)


__all__ = [
    "StorageAccessError",
    "absolute_uri",
    "cache_root",
    "fetch_dir",
    "get_filesystem",
    "is_hub_id",
    "is_remote",
    "local_path",
    "looks_like_path",
    "normal_uri",
    "storage_access",
    "storage_error",
    "strip_file_scheme",
    "upload_dir",
]
