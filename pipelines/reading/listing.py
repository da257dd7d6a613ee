"""Listing input files (fsspec: local, file://, s3://...): a file, a folder/prefix, a glob,
or a brace pattern (WebDataset's shard notation: shards-{00000..00099}.tar)."""

from __future__ import annotations

import bisect
import os
import posixpath
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs

from .options import InputFormat, format_extensions


class InputListingError(ValueError):
    """input.uri names nothing readable."""



def _protocol_prefix(uri: str, fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return "" if protocol in ("file", "local") else f"{protocol}://"



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
    """Files under `uri` (a file, a folder/prefix, a glob, or a brace pattern) that hold
    inputs, with sizes.

    Braces name paths as bash and WebDataset expand them: shards-{00000..00099}.tar is
    100 zero-padded names, {train,val}/*.tar two globs. Every path they name must exist
    (InputListingError lists those that do not: a range past the last shard is a typo,
    not an empty shard); the folder before the first brace is listed once, not each name.

    The files of job outputs (_SUCCESS, _errors/, _commits/, Spark's _temporary/...) are
    not inputs and are passed over; hidden files (.DS_Store, .crc) and names without an
    input ending are skipped and reported in `ignored`. A local folder's symlinked
    folders are followed. A path that exists as written is a path even when it holds
    glob characters ("photos [2024]"). Sizes come with the listing (no request per file).
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    prefix = _protocol_prefix(uri, fs)
    wanted = format_extensions(format, extensions)
    named = brace_paths(path)
    if named is not None and not fs.exists(path):
        found, base = _list_named(fs, uri, path, named), glob_base(path)
    elif any(ch in path for ch in "*?[") and not fs.exists(path):
        found = {p: info for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}
        base = glob_base(path)
    elif fs.isdir(path):
        found = _find(fs, uri, path)
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


def brace_paths(path: str) -> list[str] | None:
    """The paths a brace pattern names, in order and without repeats, or None when `path`
    has no brace expression ({a,b} or {0..9}; a lone {2024} is part of a name)."""
    if "{" not in path:
        return None
    named = list(dict.fromkeys(braceexpand(path)))
    return None if named == [path] else named


def has_pattern(path: str) -> bool:
    """True when `path` is a glob or a brace pattern rather than one path (cheap: ids are
    made relative to the input root row by row, and a brace range may name 10^5 shards)."""
    return any(c in path for c in "*?[") or _first_brace(path) is not None


def glob_base(path: str) -> str:
    """The folder a glob or brace pattern searches: its path up to the folder before the
    first * ? [ (or { of a brace expression)."""
    cuts = [path.index(c) for c in "*?[" if c in path]
    brace = _first_brace(path)
    if brace is not None:
        cuts.append(brace)
    return path[: min(cuts)].rsplit("/", 1)[0]


def _first_brace(path: str) -> int | None:
    """Where the first brace expression of `path` starts ({a,b} or {0..9}; a { that
    expands to itself, as in "run {1}", is part of a name), or None."""
    at = path.find("{")
    while at >= 0:
        depth = 0
        for end in range(at, len(path)):
            depth += {"{": 1, "}": -1}.get(path[end], 0)
            if depth == 0:
                if _is_expression(path[at : end + 1]):
                    return at
                break
        at = path.find("{", at + 1)
    return None


# {x..y} or {x..y..step} with numbers (zero padding kept) or single letters: braceexpand's
# sequences. The other expression is a list, {a,b}.
_SEQUENCE = re.compile(r"\{(-?\d+\.\.-?\d+|[a-zA-Z]\.\.[a-zA-Z])(\.\.-?\d+)?\}")


def _is_expression(group: str) -> bool:
    """Whether a {...} group expands (a sequence, or a list: a comma outside nested
    braces), told from its text: braceexpand builds a whole range to expand it, and ids
    are made relative to a root that may name a million shards, row by row."""
    if _SEQUENCE.fullmatch(group):
        return True
    depth = 0
    for ch in group[1:-1]:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            return True
    return False


def _list_named(fs: fsspec.AbstractFileSystem, uri: str, path: str, named: list[str]) -> dict[str, dict[str, Any]]:
    """The files brace-expanded paths name ({path: info}): a name is a file, a folder (its
    files), or a glob. One listing of the pattern's base folder serves every plain name,
    so naming 10,000 shards on S3 is one recursive listing, not 10,000 requests."""
    base = glob_base(path)
    listed = _find(fs, uri, base) if fs.isdir(base) else {}
    keys = sorted(listed)
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for name in named:
        if any(ch in name for ch in "*?["):
            hits = {p: i for p, i in fs.glob(name, detail=True).items() if i.get("type") == "file"}
        elif name in listed:
            hits = {name: listed[name]}
        else:  # a folder: the files under it (sorted keys: one contiguous run)
            folder = name.rstrip("/") + "/"
            at = bisect.bisect_left(keys, folder)
            hits = {}
            while at < len(keys) and keys[at].startswith(folder):
                hits[keys[at]] = listed[keys[at]]
                at += 1
        if not hits:
            missing.append(_protocol_prefix(uri, fs) + name)
        found.update(hits)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputListingError(
            f"input.uri {uri!r}: its braces name {len(named)} path(s), and {len(missing)} of them do not exist "
            f"({shown}); fix the range in input.uri (e.g. the last shard's number), or name only the shards "
            "that exist"
        )
    return found


def _find(fs: fsspec.AbstractFileSystem, uri: str, folder: str) -> dict[str, dict[str, Any]]:
    """The files under `folder` ({path: info}): a local folder walked with its symlinked
    folders followed, anything else by fsspec's recursive find."""
    return _walk_local(folder) if _protocol_prefix(uri, fs) == "" else fs.find(folder, detail=True)


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



def relative_id(file_uri: str, root: str) -> str:
    """A file's id: its path relative to the input root (a glob's or brace pattern's fixed folder)."""
    def bare(u: str) -> str:
        return u.split("://", 1)[1] if "://" in u else u

    file_path, root_path = bare(file_uri), bare(root).rstrip("/")
    if file_path == root_path:
        return posixpath.basename(file_path)
    if has_pattern(root_path) and not os.path.exists(root_path):
        root_path = glob_base(root_path)
    if file_path.startswith(root_path + "/"):
        return file_path[len(root_path) + 1 :]
    return file_path
