"""The commit protocol: how results become output, exactly once.

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

Protocol (per shard; the shard's rows may be spread over many blocks and workers):
1. workers write each block's rows as staged files under _staging/<run_id>/<shard_key>/
   and return a record naming them; only records of finished tasks reach the driver,
   so files of a killed or retried attempt are never used;
2. when records cover all rows of a shard, the driver merges them, checks that every
   row index 0..n-1 appears exactly once across ok and error rows, writes the data
   and error files under names derived from the shard (a second commit of the same
   shard overwrites, never duplicates), moves each into place, and writes the
   manifest last;
3. on resume, staged leftovers and data files without a manifest (a crash between
   steps 2's moves and its manifest) are deleted before any work, and shards whose
   manifest exists are not read again.
Object stores have no rename: a PUT is atomic per object, so every final file appears
whole or not at all; deterministic names + manifest-last + cleanup-on-resume is
what makes the protocol safe there.
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .. import faults
from ..errors import JobError
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

# Our file names, exactly: a shard key is sha256(...)[:20] in hex (readers.Shard), a run
# id the time and 8 hex digits (run._JobRun), a staged block file a uuid4 in hex.
_PART = re.compile(r"^part-([0-9a-f]{20}|empty)\.parquet$")
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
        return rel in _TOP_FILES or bool(_PART.fullmatch(rel))
    if len(parts) == 2 and parts[0] == ERRORS_DIR:
        return bool(_PART.fullmatch(parts[1]))
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

_INTERNAL = [("row_index", pa.int64()), ("shard_key", pa.string())]
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
RECORD_SCHEMA = pa.schema(
    [
        ("shard_key", pa.string()),
        ("shard_rows", pa.int64()),
        ("rows", pa.int64()),
        ("ok_path", pa.string()),
        ("error_path", pa.string()),
        # JSON of additive counters from the model stage (e.g. decoder positions), "" if none
        ("stats", pa.string()),
    ]
)


class OutputExistsError(JobError, RuntimeError):
    """output.mode=error_if_exists and the output already holds files."""


class CommitError(RuntimeError):
    """Staged results of a shard do not add up to its rows (a bug, never committed)."""


def _fs(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = url_to_fs(uri, **dict(storage_options or {}))
    return fs, root.rstrip("/")


def _write_parquet(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def _write_json(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))


def _str_column(table: pa.Table, name: str) -> pa.Array:
    """A string column, or nulls when Ray Data turned an all-None column into floats."""
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    return pa.nulls(table.num_rows, pa.string())


def stage_results(
    block: pa.Table,
    *,
    output_uri: str,
    run_id: str,
    schema: pa.Schema,
    lineage: Mapping[str, str],
    produced_at: datetime,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Split a block of processed rows into ok/error tables per shard and stage them.

    `block` holds the reader's columns, the task's output columns (named in `schema`,
    the output schema) and `model_sha256`; `lineage` gives model_uri, spec_hash and
    params_hash. Returns RECORD_SCHEMA rows, one per shard present in the block.
    """
    fs, root = _fs(output_uri, storage_options)
    records: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    stats_column = block.column("model_stats").to_pylist() if "model_stats" in block.column_names else None
    keys = block.column("shard_key").to_pylist()
    ok_schema = pa.schema(list(schema) + [pa.field(*f) for f in _INTERNAL])
    err_schema = pa.schema(list(ERROR_SCHEMA) + [pa.field(*f) for f in _INTERNAL])
    for key in sorted(set(keys)):
        mask = pc.equal(block.column("shard_key"), key)
        part = block.filter(mask)
        failed = pc.not_equal(part.column("error_stage"), "")
        ok, bad = part.filter(pc.invert(failed)), part.filter(failed)
        n_ok, n_bad = ok.num_rows, bad.num_rows
        name = f"{uuid.uuid4().hex}"
        base = f"{root}/{STAGING_DIR}/{run_id}/{key}"
        ok_path = err_path = ""
        if n_ok:
            constants = {
                "reference": _str_column(ok, "reference"),
                "model_uri": pa.array([lineage["model_uri"]] * n_ok, pa.string()),
                "spec_hash": pa.array([lineage["spec_hash"]] * n_ok, pa.string()),
                "params_hash": pa.array([lineage["params_hash"]] * n_ok, pa.string()),
                "produced_at": pa.array([produced_at] * n_ok, pa.timestamp("us", tz="UTC")),
            }
            table = pa.table(
                {f.name: constants[f.name] if f.name in constants else ok.column(f.name) for f in ok_schema},
            ).cast(ok_schema)
            ok_path = f"{base}/{name}-ok.parquet"
            _write_parquet(fs, ok_path, table)
        if n_bad:
            table = pa.table(
                {
                    "id": bad.column("id"),
                    "source_uri": bad.column("source_uri"),
                    "source_row": bad.column("source_row"),
                    "stage": bad.column("error_stage"),
                    "cause": bad.column("error_cause"),
                    "message": bad.column("error_message"),
                    "spec_hash": pa.array([lineage["spec_hash"]] * n_bad, pa.string()),
                    "produced_at": pa.array([produced_at] * n_bad, pa.timestamp("us", tz="UTC")),
                    "row_index": bad.column("row_index"),
                    "shard_key": bad.column("shard_key"),
                }
            ).cast(err_schema)
            err_path = f"{base}/{name}-err.parquet"
            _write_parquet(fs, err_path, table)
        stats = ""
        if stats_column is not None:
            # A batch's counters ride on its first row; a block may hold several batches.
            picked = [v for v, m in zip(stats_column, mask.to_pylist(), strict=True) if m and v]
            stats = json.dumps(_add_counters(json.loads(v) for v in picked)) if picked else ""
        records["shard_key"].append(key)
        records["shard_rows"].append(part.column("shard_rows")[0].as_py())
        records["rows"].append(n_ok + n_bad)
        records["ok_path"].append(ok_path)
        records["error_path"].append(err_path)
        records["stats"].append(stats)
    return pa.table(records, schema=RECORD_SCHEMA)


def _add_counters(items: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for item in items:
        for k, v in item.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


@dataclass
class StagedShard:
    """A shard's staged results as the driver gathers them from the staging records.

    Complete when `rows` reaches `shard_rows`; then commit_shard makes it output.
    """

    key: str
    inputs: list[str]
    shard_rows: int
    rows: int = 0
    ok_paths: list[str] = field(default_factory=list)
    error_paths: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one RECORD_SCHEMA record (a block's part of this shard)."""
        self.rows += record["rows"]
        if record["ok_path"]:
            self.ok_paths.append(record["ok_path"])
        if record["error_path"]:
            self.error_paths.append(record["error_path"])
        for k, v in (json.loads(record["stats"]) if record.get("stats") else {}).items():
            self.stats[k] = self.stats.get(k, 0.0) + v

    @property
    def complete(self) -> bool:
        return self.rows >= self.shard_rows


@dataclass
class ShardManifest:
    """What one commit made part of the output."""

    shard_key: str
    inputs: list[str]
    rows_in: int
    rows_ok: int
    rows_errored: int
    data_files: list[str]
    error_files: list[str]
    run_id: str
    committed_at: str
    # Additive sums the task computed over the shard's ok rows (e.g. exact matches),
    # and the model stage's counters for it (e.g. decoder positions).
    metric_sums: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    # cause -> [errored rows, the first row's message]: the summary's top causes without
    # reading the errors table back.
    error_causes: dict[str, list] = field(default_factory=dict)
    # Input files that failed as a whole with an unknown number of rows (a '#file' row).
    files_failed: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardManifest:
        """A manifest as written by this or an earlier version (0.1 kept exact-match counts)."""
        data = dict(data)
        legacy = {k: float(data.pop(k)) for k in ("reference_rows", "exact_matches") if k in data}
        data.pop("extra", None)
        manifest = cls(**data)
        manifest.metric_sums = {**legacy, **manifest.metric_sums}
        return manifest


class OutputStore:
    """output.uri as the commit protocol sees it (see the module docstring).

    `schema` (the output table's) is needed only to commit; surveying needs none.
    """

    def __init__(
        self, uri: str, *, schema: pa.Schema | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.uri = uri.rstrip("/")
        self.schema = schema
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = _fs(uri, storage_options)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def survey(self) -> OutputSurvey:
        """What the output holds now (read-only: the driver's check before any write)."""
        if not self.fs.exists(self.root):
            return OutputSurvey([], [])
        if self.fs.isfile(self.root):
            return OutputSurvey([], [self.root], is_file=True)
        # Keys ending in "/" are folder markers (the S3 console's empty "folder/" objects), no files.
        rels = sorted(p[len(self.root) + 1 :] for p in self.fs.find(self.root)
                      if p.startswith(self.root + "/") and not p.endswith("/"))
        ours = JOB_FILE in rels and self.job_record() is not None
        own = [r for r in rels if is_own_path(r) and (ours or r == LEASE_FILE)]
        if LEASE_FILE in own and not _is_lease(self.fs, self._path(LEASE_FILE)):
            own.remove(LEASE_FILE)  # somebody else's file of that name
        taken = set(own)
        return OutputSurvey(own, [r for r in rels if r not in taken])

    def job_record(self) -> dict[str, Any] | None:
        """_job.json as we write it ({"fingerprint": ...}), or None (absent or not ours)."""
        try:
            with self.fs.open(self._path(JOB_FILE), "r") as f:
                data = json.load(f)
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) else None

    def existing_problem(self, survey: OutputSurvey, mode: str) -> str | None:
        """Why `mode` cannot start on the output as surveyed (None: it can)."""
        problem = survey.foreign_problem(self.uri)
        if problem is None and mode == "error_if_exists" and survey.results:
            problem = (
                f"output.uri: {self.uri} already holds the output of an earlier run (output.mode is "
                "error_if_exists). Set output.mode=resume to continue that job, output.mode=overwrite to "
                "replace it, or choose another output.uri"
            )
        return problem

    def fingerprint_problem(self, survey: OutputSurvey, fingerprint: str, weights_id: str = "") -> str | None:
        """Why this output's results cannot be continued by a job with `fingerprint` and the
        model weights `weights_id` (None: they can)."""
        previous = self.job_record()
        if not survey.results or previous is None:
            return None
        if previous["fingerprint"] != fingerprint:
            return (
                f"output.uri: {self.uri} was written by a job with other inputs, model or generation "
                f"parameters (fingerprint {previous['fingerprint'][:12]} != {fingerprint[:12]}); resuming "
                "would mix results. Use output.mode=overwrite or another output.uri"
            )
        before = previous.get("model_weights") or ""
        if before and weights_id and before != weights_id:
            return (
                f"output.uri: {self.uri} was written with other weights at the same model.uri ({before[:19]} != "
                f"{weights_id[:19]}): the model was replaced since; resuming would mix two models' rows. Use "
                "output.mode=overwrite or another output.uri"
            )
        return None

    # --- start of a run -----------------------------------------------------------------

    def prepare(self, *, mode: str, fingerprint: str, weights_id: str = "") -> dict[str, ShardManifest]:
        """Apply output.mode and return the manifests of shards already committed.

        Checked again here, under the lease: an output holding files that are not ours
        is refused in every mode. overwrite deletes our layout's files only; resume
        deletes staged leftovers and uncommitted data files first, and refuses an output
        written by a job with a different fingerprint (input, model, generation).
        """
        survey = self.survey()
        problem = self.existing_problem(survey, mode) or (
            None if mode == "overwrite" else self.fingerprint_problem(survey, fingerprint, weights_id)
        )
        if problem is not None:
            raise OutputExistsError(problem)
        if mode == "overwrite" and survey.results:
            # One call: object stores delete in bulk. The lease is this run's own (lease.py).
            self.fs.rm([self._path(rel) for rel in survey.results])
            for folder in (ERRORS_DIR, COMMITS_DIR):  # empty folders left behind
                if self.fs.exists(self._path(folder)) and not self.fs.find(self._path(folder)):
                    self.fs.rm(self._path(folder), recursive=True)
        success = self._path(SUCCESS_FILE)
        if self.fs.exists(success):
            # Whatever this run does, the output is not known complete until it ends.
            self.fs.rm(success)
        # The same when resuming. model_weights: which weights wrote the rows (a resume
        # refuses others at the same model.uri).
        _write_json(self.fs, self._path(JOB_FILE), {"fingerprint": fingerprint, "model_weights": weights_id})
        manifests = self.committed()
        self._cleanup(manifests)
        return manifests

    def committed(self) -> dict[str, ShardManifest]:
        """Manifests under _commits/, by shard key."""
        folder = self._path(COMMITS_DIR)
        if not self.fs.exists(folder):
            return {}
        out = {}
        for path in self.fs.find(folder):
            if not path.endswith(".json"):
                continue
            with self.fs.open(path, "r") as f:
                manifest = ShardManifest.from_json(json.load(f))
            out[manifest.shard_key] = manifest
        return out

    def _cleanup(self, manifests: Mapping[str, ShardManifest]) -> None:
        """Remove staged leftovers and data files that no manifest names."""
        self._remove_staging()
        keep = {f for m in manifests.values() for f in m.data_files + m.error_files}
        for folder in (self.root, self._path(ERRORS_DIR)):
            if not self.fs.exists(folder):
                continue
            for path in self.fs.ls(folder, detail=False):
                rel = path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path
                name = posixpath.basename(path)
                if _PART.fullmatch(name) and rel not in keep:
                    self.fs.rm(path)

    def _remove_staging(self) -> None:
        """Delete our staged files (and the folders they leave empty); nothing else there."""
        staging = self._path(STAGING_DIR)
        if not self.fs.exists(staging):
            return
        files = [p for p in self.fs.find(staging) if is_own_path(p[len(self.root) + 1 :])]
        if files:
            self.fs.rm(files)
        if not self.fs.find(staging):
            self.fs.rm(staging, recursive=True)  # only empty folders are left under it

    # --- commit -------------------------------------------------------------------------

    def duplicate_rows(self, manifests: Mapping[str, ShardManifest]) -> set[tuple[str, int]]:
        """(source_uri, source_row) of the committed rows that went to _errors as duplicate_id.

        Such a row never claimed its id (an earlier row did, maybe one not committed yet),
        so a resumed job must not count it as the first occurrence.
        """
        paths = [self._path(rel) for m in manifests.values() for rel in m.error_files]
        errors = self._read(paths, columns=["source_uri", "source_row", "cause"])
        if errors is None:
            return set()
        dup = errors.filter(pc.equal(errors.column("cause"), "duplicate_id"))
        return set(zip(dup.column("source_uri").to_pylist(), dup.column("source_row").to_pylist(), strict=True))

    def _read(self, paths: list[str], columns: list[str] | None = None) -> pa.Table | None:
        tables = []
        for path in paths:
            with self.fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(tables) if tables else None

    def commit_shard(
        self,
        shard: StagedShard,
        *,
        run_id: str,
        commit_number: int,
        metric_sums: Callable[[pa.Table], dict[str, float]] | None = None,
    ) -> ShardManifest:
        """Merge a shard's staged files into its final files, then write its manifest.

        `metric_sums` (the task's) is called on the shard's merged ok rows; its result
        is kept in the manifest, as are the model stage's counters for the shard.
        """
        shard_key, inputs, shard_rows = shard.key, shard.inputs, shard.shard_rows
        ok = self._read(shard.ok_paths)
        bad = self._read(shard.error_paths)
        ok = _dedupe(ok)
        bad = _dedupe(bad)
        seen_ok = set(ok.column("row_index").to_pylist()) if ok is not None else set()
        seen_bad = set(bad.column("row_index").to_pylist()) if bad is not None else set()
        if seen_ok & seen_bad or (seen_ok | seen_bad) != set(range(shard_rows)):
            raise CommitError(
                f"shard {shard_key} ({inputs[:3]}...): staged rows do not match its {shard_rows} "
                f"input rows (ok {len(seen_ok)}, errored {len(seen_bad)}, overlap "
                f"{len(seen_ok & seen_bad)}); not committed. This is a bug; rerun with "
                "output.mode=resume to redo the shard"
            )
        data_files, error_files = [], []
        sums: dict[str, float] = {}
        for table, schema, rel in (
            (ok, self.schema, f"part-{shard_key}.parquet"),
            (bad, ERROR_SCHEMA, f"{ERRORS_DIR}/part-{shard_key}.parquet"),
        ):
            if table is None or table.num_rows == 0:
                continue
            table = table.sort_by("row_index").select(schema.names)
            # Staged under '_' first, then moved: a local rename is atomic, and on an
            # object store the final object is created whole by one copy.
            tmp = self._path(STAGING_DIR, run_id, "commit", rel.replace("/", "-"))
            _write_parquet(self.fs, tmp, table)
            final = self._path(rel)
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            self.fs.mv(tmp, final)
            (data_files if schema is self.schema else error_files).append(rel)
            if schema is self.schema and metric_sums is not None:
                sums = metric_sums(table)
        faults.maybe_kill("driver_before_manifest", commit_number)
        manifest = ShardManifest(
            shard_key=shard_key,
            inputs=list(inputs),
            rows_in=shard_rows,
            rows_ok=len(seen_ok),
            rows_errored=len(seen_bad),
            data_files=data_files,
            error_files=error_files,
            run_id=run_id,
            committed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            metric_sums=sums,
            stats=dict(shard.stats),
            error_causes=_error_causes(bad),
            files_failed=0 if bad is None else len(set(bad.filter(pc.less(bad.column("source_row"), 0))
                                                       .column("source_uri").to_pylist())),
        )
        tmp = self._path(STAGING_DIR, run_id, "commit", f"{shard_key}.json")
        _write_json(self.fs, tmp, manifest.__dict__)
        final = self._path(COMMITS_DIR, f"{shard_key}.json")
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.mv(tmp, final)
        staged = self._path(STAGING_DIR, run_id, shard_key)
        if self.fs.exists(staged):
            self.fs.rm(staged, recursive=True)
        return manifest

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write _summary.json and drop this run's empty staging folder.

        A folder with no rows (no errors at all, or every row rejected) still gets one
        empty Parquet file with its schema, so `pd.read_parquet(errors_uri)` and
        other plain readers return an empty table instead of failing.
        """
        self._remove_staging()
        for folder, schema in (("", self.schema), (ERRORS_DIR, ERROR_SCHEMA)):
            base = self._path(folder) if folder else self.root
            if not self.fs.glob(f"{base}/*.parquet"):
                self.fs.makedirs(base, exist_ok=True)
                _write_parquet(self.fs, f"{base}/part-empty.parquet", schema.empty_table())
        self.write_summary(summary)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """(Re)write _summary.json."""
        _write_json(self.fs, self._path(SUMMARY_FILE), dict(summary))

    def mark_success(self) -> None:
        """Write the empty _SUCCESS file: last, once every input of the job is committed."""
        with self.fs.open(self._path(SUCCESS_FILE), "wb"):
            pass


def _is_lease(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the file at `path` is a lease as lease.py writes it."""
    try:
        with fs.open(path, "r") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and {"run_id", "host", "pid", "ttl_s"} <= set(data)


def _error_causes(errors: pa.Table | None) -> dict[str, list]:
    """cause -> [rows, first message] of a shard's error rows."""
    out: dict[str, list] = {}
    if errors is None:
        return out
    for cause, message in zip(errors.column("cause").to_pylist(), errors.column("message").to_pylist(), strict=True):
        entry = out.setdefault(cause or "unknown", [0, message or ""])
        entry[0] += 1
    return out


def _dedupe(table: pa.Table | None) -> pa.Table | None:
    """Keep the first row per row_index (a block retried after a lost reply may repeat)."""
    if table is None:
        return None
    seen: set[int] = set()
    keep = []
    for idx in table.column("row_index").to_pylist():
        keep.append(idx not in seen)
        seen.add(idx)
    return table.filter(pa.array(keep)) if not all(keep) else table
