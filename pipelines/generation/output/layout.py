"""The output layout: the names a job writes under output.uri, the tables' schemas, and
what tells our files from anyone else's.

Layout under output.uri:

    part-<shard_key>.parquet          ok rows of one committed shard (plain-directory readable)
    _errors/part-<shard_key>.parquet  rejected rows of that shard
    _commits/<shard_key>.json         the shard's manifest: written last, it makes the shard committed
    _staging/<run_id>/...             staged block files of running jobs (ignored by readers: '_')
    _job.json                         fingerprint of the job that owns this output
    _summary.json                     rows_in / rows_ok / rows_errored ... of the whole output
    _gallery.html, _SUCCESS, _lease.json (lease.py)

Nothing else is ours. A job deletes only files of this layout (output.mode=overwrite,
resume's cleanup), recognised by exact names (a shard key is 20 hex digits) in a folder
whose _job.json we wrote; a folder holding anything else is refused before any write
(`OutputStore.survey`), so a user's own files are never touched.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .lease import LEASE_FILE

COMMITS_DIR = "_commits"
ERRORS_DIR = "_errors"
STAGING_DIR = "_staging"
JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
# Hadoop / Spark's marker that a job committed everything (schedulers' sensors wait on it).
SUCCESS_FILE = "_SUCCESS"
# "_" first: plain-directory Parquet readers (pyarrow, pandas, Spark, DuckDB) skip names
# that start with "_" or ".", so the page never breaks `pd.read_parquet(output_uri)`.
GALLERY_FILE = "_gallery.html"

# Our file names, exactly: a shard key is sha256(...)[:20] in hex (reading.Shard), a run
# id the time and 8 hex digits (run._JobRun), a staged block file a uuid4 in hex.
PART_NAME = re.compile(r"^part-([0-9a-f]{20}|empty)\.parquet$")
_MANIFEST = re.compile(r"^[0-9a-f]{20}\.json$")
_STAGED = re.compile(
    r"^_staging/\d{8}T\d{6}-[0-9a-f]{8}/"
    r"([0-9a-f]{20}/[0-9a-f]{32}-(ok|err)\.parquet|commit/((_errors-)?part-[0-9a-f]{20}\.parquet|[0-9a-f]{20}\.json))$"
)
_TOP_FILES = {JOB_FILE, SUMMARY_FILE, SUCCESS_FILE, GALLERY_FILE, LEASE_FILE}


def is_own_path(rel: str) -> bool:
    """Whether `rel` (a path relative to output.uri) is a file of the output layout."""
    parts = rel.split("/")
    if parts[0] == STAGING_DIR:
        return bool(_STAGED.fullmatch(rel))
    if len(parts) == 1:
        return rel in _TOP_FILES or bool(PART_NAME.fullmatch(rel))
    if len(parts) == 2 and parts[0] == ERRORS_DIR:
        return bool(PART_NAME.fullmatch(parts[1]))
    return len(parts) == 2 and parts[0] == COMMITS_DIR and bool(_MANIFEST.fullmatch(parts[1]))


@dataclass(frozen=True)
class OutputSurvey:
    """What output.uri holds now: files of our layout, and anything else (foreign).

    Without our _job.json only our lease counts as ours: a Spark output's
    part-*.parquet and _SUCCESS are somebody else's, whatever their names.
    """

    own: list[str]
    foreign: list[str]
    is_file: bool = False

    @property
    def results(self) -> list[str]:
        """An earlier run's results: our files but the lease, _job.json and staged leftovers
        (a run that stopped before its first commit left no results)."""
        return [p for p in self.own if p not in (LEASE_FILE, JOB_FILE) and not p.startswith(STAGING_DIR + "/")]

    def foreign_problem(self, uri: str) -> str | None:
        """The refusal for an output that holds files that are not ours (None: none)."""
        if self.is_file:
            return f"output.uri: {uri} is a file; name a folder (or prefix) for the output"
        if not self.foreign:
            return None
        shown = ", ".join(self.foreign[:5]) + (f" and {len(self.foreign) - 5} more" if len(self.foreign) > 5 else "")
        return (
            f"output.uri: {uri} holds {len(self.foreign)} file(s) this job did not write ({shown}). A job "
            "writes only into a new or empty folder or its own earlier output, and never deletes what it "
            "did not write, in any output.mode: choose another output.uri, or move those files away"
        )

INTERNAL_FIELDS = [("row_index", pa.int64()), ("shard_key", pa.string())]
# Every output table: where the row came from, the task's own columns, then reference
# and lineage. `output_schema` puts a task's fields in the middle.
_SOURCE_FIELDS = [pa.field("id", pa.string()), pa.field("source_uri", pa.string()), pa.field("source_row", pa.int64())]
_LINEAGE_FIELDS = [
    pa.field("reference", pa.string()),
    pa.field("model_uri", pa.string()),
    pa.field("model_sha256", pa.string()),
    pa.field("spec_hash", pa.string()),
    pa.field("params_hash", pa.string()),
    pa.field("produced_at", pa.timestamp("us", tz="UTC")),
]


def output_schema(task_fields: list[pa.Field]) -> pa.Schema:
    """The output table's schema for a task whose own columns are `task_fields`."""
    return pa.schema(_SOURCE_FIELDS + list(task_fields) + _LINEAGE_FIELDS)


ERROR_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_uri", pa.string()),
        ("source_row", pa.int64()),
        ("stage", pa.string()),
        ("cause", pa.string()),
        ("message", pa.string()),
        ("spec_hash", pa.string()),
        ("produced_at", pa.timestamp("us", tz="UTC")),
    ]
)


def output_fs(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = url_to_fs(uri, **dict(storage_options or {}))
    return fs, root.rstrip("/")


def write_parquet(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def write_json(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
