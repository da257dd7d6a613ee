"""WebDataset tar shards: samples of an image and its text / json, streamed from a tar.

The convention img2dataset, LAION, DataComp and CC12M ship in: a tar holds files whose
names, up to the first dot of the base name, are a sample's key
(`00000/000000012.jpg`, `00000/000000012.txt`, `00000/000000012.json`), and a sample's
files are consecutive. A tar is read as a stream (tarfile's "r|*": never whole in
memory, gzip / bz2 / xz detected), one sample at a time; the standard library does all
of it, so the `webdataset` package would add a dependency and no capability here.

Each sample becomes one row: the image member (the first of `image_extensions` it has)
is the payload, its key the id (or a field of its json member), its reference the
`txt` member or a json field. A sample without an image, and a sample cut by the end of
a truncated tar, are error rows naming the tar and the key; the samples before a cut
are kept. Rows are handed on as samples come (reading.iter_shard cuts tables).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .options import ReaderOptions
from .rows import RowBuilder


class ShardCutError(Exception):
    """The tar ended inside a member or a header: `samples` were read before the break."""

    def __init__(self, message: str, samples: int) -> None:
        super().__init__(message)
        self.samples = samples


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key is the path up to the first dot of the
    base name, the extension the rest, lower-cased (`a/b.seg.png` -> `a/b`, `seg.png`)."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), (ext.lower() if dot else "")


def read_webdataset(rows: RowBuilder, fs: fsspec.AbstractFileSystem, path: str, uri: str,
                    opts: ReaderOptions) -> Iterator[None]:
    """Add one row per sample of the tar at `path`, yielding after each (a table may be
    cut there: a tar is never whole in memory); raise ShardCutError after the rows read
    before a break when the tar is cut short or corrupt part-way."""
    wanted = _wanted_members(opts)
    seen: set[str] = set()  # keys of this tar's samples so far
    split: set[int] = set()  # samples whose key came before, in members further up
    samples = 0
    key: str | None = None
    members: dict[str, bytes | None] = {}
    with fs.open(path, "rb") as raw:
        f = _Counting(raw)
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    name_key, ext = split_name(info.name)
                    if name_key.rsplit("/", 1)[-1].startswith((".", "_")) and not ext:
                        continue  # metadata files of other tools, no sample
                    if key is not None and name_key != key:
                        _add_sample(rows, uri, samples, key, members, opts, split=samples in split)
                        seen.add(key)
                        samples += 1
                        members = {}
                        yield
                        if name_key in seen:
                            # Its members are not consecutive (webdataset's TarWriter and
                            # img2dataset write them so; `tar cf` of a folder may not): the
                            # earlier part was a row already, this part is told apart from a
                            # sample that lacks its image.
                            split.add(samples)
                    key = name_key
                    # Members no row needs are skipped unread (the stream seeks past them).
                    members[ext] = tar.extractfile(info).read() if wanted(ext) else None
                # tarfile ends a stream quietly where a header is missing or cut short (an
                # uncompressed tar cut at a member boundary), having tried to read it; a whole
                # tar ends with zero blocks. Checked once the loop is over: mid-stream the
                # reader may not have read past a member's data yet.
                if tar.fileobj.comptype == "tar" and f.bytes < tar.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("the tar ends without its end-of-archive blocks")
        except (tarfile.ReadError, EOFError, zlib.error, OSError) as exc:
            if samples == 0 and key is None:
                raise
            if key is not None:
                rows.add(id=key, source_uri=uri, source_row=samples, error=(
                    "read", "truncated_file", f"sample {key!r} of {uri} was cut short by the end of the tar ({exc})"))
            raise ShardCutError(f"the tar breaks after {samples} whole sample(s) ({type(exc).__name__}: {exc})",
                                samples) from None
    if key is not None:
        _add_sample(rows, uri, samples, key, members, opts, split=samples in split)


class _Counting:
    """A file reader that counts the bytes it gave (to tell a cut tar from a whole one)."""

    def __init__(self, f: Any) -> None:
        self._f, self.bytes = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.bytes += len(data)
        return data


def _wanted_members(opts: ReaderOptions) -> Any:
    images = set(opts.image_extensions)
    texts = {c.split(".", 1)[0] for c in (opts.reference_column, opts.id_column) if c}
    return lambda ext: (opts.payloads and ext in images) or ext in texts


def _add_sample(rows: RowBuilder, uri: str, index: int, key: str, members: dict[str, bytes | None],
                opts: ReaderOptions, *, split: bool = False) -> None:
    parsed: dict[str, Any] = {}  # json members, parsed once for the id and the reference
    rid, problem = _sample_id(key, members, opts, parsed)
    reference = _field(members, opts.reference_column, parsed) if opts.reference_column else None
    bad = next(((ext, v) for ext, v in parsed.items() if isinstance(v, _BadJson)), None)
    if bad is not None:
        # Before missing_id / a null reference: the field is not missing, its member is unreadable.
        problem = ("bad_json", f"the {bad[0]} member of sample {key!r} of {uri} is not valid JSON ({bad[1].why}), "
                   "so its fields cannot be read")
    image_ext = next((e for e in opts.image_extensions if e in members), None)
    if problem is None and image_ext is None:
        have = ", ".join(sorted(members)) or "none"
        problem = ("missing_image", f"sample {key!r} of {uri} has no image member (its members: {have}); "
                   f"input.image_extensions is {list(opts.image_extensions)}: add the extension its image has")
    if split:
        problem = ("split_sample", f"members of sample {key!r} of {uri} are not next to each other in the tar: "
                   f"these ({', '.join(sorted(members))}) come after other samples' members, so they were not "
                   "read with the sample's first members (an earlier row). Write each sample's members together "
                   "(webdataset's TarWriter, img2dataset, or tar --sort=name)")
    if problem is not None:
        rows.add(id=rid, source_uri=uri, source_row=index, reference=reference, error=("read", *problem))
        return
    rows.add(id=rid, source_uri=uri, source_row=index, payload=members[image_ext] or b"", reference=reference)


def _sample_id(key: str, members: dict[str, bytes | None], opts: ReaderOptions,
               parsed: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """A sample's id: its key, or the json field input.id_column names."""
    if not opts.id_column:
        return key, None
    value = _field(members, opts.id_column, parsed)
    if value is None or not str(value).strip():
        return key, ("missing_id", f"sample {key!r} has no {opts.id_column} value: ids are how output rows are "
                     "joined back; unset input.id_column to use the sample key")
    return str(value), None


def _field(members: dict[str, bytes | None], name: str, parsed: dict[str, Any]) -> str | None:
    """`txt` (a member's text) or `json.caption` (a field of the json member), None when absent."""
    ext, _, field = name.partition(".")
    data = members.get(ext)
    if data is None:
        return None
    if not field:
        return data.decode("utf-8", errors="replace").strip()
    if ext not in parsed:
        try:
            parsed[ext] = json.loads(data)
        except ValueError as exc:  # also a UnicodeDecodeError
            parsed[ext] = _BadJson(f"{type(exc).__name__}: {exc}")
    value = parsed[ext]
    if isinstance(value, _BadJson):
        return None
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)


class _BadJson:
    """A json member that did not parse (its sample becomes a bad_json error row)."""

    def __init__(self, why: str) -> None:
        self.why = why


def sample_members(uri: str, opts: ReaderOptions, *, samples: int) -> tuple[set[str], dict[str, set[str]]]:
    """The member extensions of a tar's first `samples` samples, and the top-level fields of
    their JSON members (by extension): the driver's check of the keys a spec names."""
    fs, path = url_to_fs(uri, **opts.storage_options)
    members: set[str] = set()
    fields: dict[str, set[str]] = {}
    keys: set[str] = set()
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_name(info.name)
            keys.add(key)
            if len(keys) > samples:
                break
            members.add(ext)
            if ext == "json" or ext.endswith(".json"):
                try:
                    value = json.loads(tar.extractfile(info).read())
                except ValueError:
                    continue
                if isinstance(value, dict):
                    fields.setdefault(ext, set()).update(value)
    return members, fields
