"""The driver's store of the output: committing a staged shard exactly once, resume's
cleanup, the summary and _SUCCESS.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import faults
from ...errors import JobError
from ...reading import CommittedGroups
from .layout import (
    COMMITS_DIR,
    ERROR_SCHEMA,
    ERRORS_DIR,
    JOB_FILE,
    PART_NAME,
    STAGING_DIR,
    SUCCESS_FILE,
    SUMMARY_FILE,
    OutputSurvey,
    is_own_path,
    output_fs,
    write_json,
    write_parquet,
)
from .lease import LEASE_FILE

if TYPE_CHECKING:
    from .committer import StagedShard

class OutputExistsError(JobError, RuntimeError):
    """output.mode=error_if_exists and the output already holds files."""


class CommitError(RuntimeError):
    """Staged results of a shard do not add up to its rows (a bug, never committed)."""



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
    # [start, stop, of]: the shard read row groups [start, stop) of its one Parquet file,
    # which has `of` of them (the file is done when its ranges cover them all). Absent
    # (None) when the shard read its input files whole, as every shard did before files
    # were split; left out of the JSON then, so those manifests stay as they were.
    row_groups: list[int] | None = None
    # Bytes of its input files (whole-file shards) when the listing said: a resume refuses a
    # committed file whose size changed, whose new rows it would otherwise never read.
    # Absent in manifests written before it was recorded (those files are not checked).
    input_bytes: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardManifest:
        """A manifest as written by this or an earlier version (0.1 kept exact-match counts)."""
        data = dict(data)
        legacy = {k: float(data.pop(k)) for k in ("reference_rows", "exact_matches") if k in data}
        data.pop("extra", None)
        manifest = cls(**data)
        manifest.metric_sums = {**legacy, **manifest.metric_sums}
        return manifest

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for optional in ("row_groups", "input_bytes"):
            if data[optional] is None:
                del data[optional]
        return data


def changed_inputs(manifests: Iterable[ShardManifest], sizes: Mapping[str, int]) -> list[str]:
    """One line per committed whole-file shard whose input files' bytes (from the listing,
    `sizes`) differ from what its manifest recorded: rewritten since they were committed."""
    changed = []
    for m in manifests:
        if m.input_bytes is None or m.row_groups is not None or not all(f in sizes for f in m.inputs):
            continue
        now = sum(sizes[f] for f in m.inputs)
        if now != m.input_bytes:
            changed.append(f"{', '.join(m.inputs[:3])}{' ...' if len(m.inputs) > 3 else ''}: {m.input_bytes} "
                           f"byte(s) when committed (run {m.run_id}), {now} now")
    return changed


def committed_inputs(manifests: Iterable[ShardManifest]) -> tuple[set[str], dict[str, CommittedGroups]]:
    """(the input files committed whole, the row groups committed of the other Parquet
    files that committed shards read part of). A file split into ranges of row groups is
    done when its committed ranges cover every row group it has."""
    done: set[str] = set()
    groups: dict[str, tuple[int, set[int]]] = {}
    for m in manifests:
        if m.row_groups is None:
            done.update(m.inputs)
            continue
        start, stop, of = m.row_groups
        groups.setdefault(m.inputs[0], (of, set()))[1].update(range(start, stop))
    partly: dict[str, CommittedGroups] = {}
    for uri, (of, got) in groups.items():
        if uri in done or got >= set(range(of)):
            done.add(uri)
        else:
            partly[uri] = CommittedGroups(of=of, groups=frozenset(got))
    return done, partly


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
        self.fs, self.root = output_fs(uri, storage_options)

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

    def fingerprint_problem(self, survey: OutputSurvey, fingerprint: str, weights_id: str = "", *,
                            fingerprint_of: Mapping[str, Any] | None = None) -> str | None:
        """Why this output's results cannot be continued by a job with `fingerprint` and the
        model weights `weights_id` (None: they can). With `fingerprint_of` (the values the
        fingerprint hashes) and an output that kept its own, the keys that differ are named."""
        previous = self.job_record()
        if not survey.results or previous is None:
            return None
        if previous["fingerprint"] != fingerprint:
            differ = _differences(previous.get("fingerprint_of"), fingerprint_of)
            what = f": {differ}" if differ else ""
            return (
                f"output.uri: {self.uri} was written by a job with other inputs, model or generation "
                f"parameters (fingerprint {previous['fingerprint'][:12]} != {fingerprint[:12]}){what}; resuming "
                "would mix results. Set them as that run did, or use output.mode=overwrite or another output.uri"
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

    def prepare(self, *, mode: str, fingerprint: str, weights_id: str = "",
                fingerprint_of: Mapping[str, Any] | None = None) -> dict[str, ShardManifest]:
        """Apply output.mode and return the manifests of shards already committed.

        Checked again here, under the lease: an output holding files that are not ours
        is refused in every mode. overwrite deletes our layout's files only; resume
        deletes staged leftovers and uncommitted data files first, and refuses an output
        written by a job with a different fingerprint (input, model, generation).
        """
        survey = self.survey()
        problem = self.existing_problem(survey, mode) or (
            None if mode == "overwrite"
            else self.fingerprint_problem(survey, fingerprint, weights_id, fingerprint_of=fingerprint_of)
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
        record: dict[str, Any] = {"fingerprint": fingerprint, "model_weights": weights_id}
        if fingerprint_of:
            record["fingerprint_of"] = dict(fingerprint_of)
        write_json(self.fs, self._path(JOB_FILE), record)
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
                if PART_NAME.fullmatch(name) and rel not in keep:
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
        ok, bad = self._merged(shard)  # each row index once, in exactly one of them
        data_files, error_files = [], []
        sums: dict[str, float] = {}
        if ok is not None and ok.num_rows:
            ok = ok.sort_by("row_index").select(self.schema.names)
            data_files.append(self._place(ok, f"part-{shard_key}.parquet", run_id))
            sums = metric_sums(ok) if metric_sums is not None else {}
        if bad is not None and bad.num_rows:
            bad = bad.sort_by("row_index").select(ERROR_SCHEMA.names)
            error_files.append(self._place(bad, f"{ERRORS_DIR}/part-{shard_key}.parquet", run_id))
        faults.maybe_kill("driver_before_manifest", commit_number)
        manifest = ShardManifest(
            shard_key=shard_key,
            inputs=list(inputs),
            rows_in=shard_rows,
            rows_ok=0 if ok is None else ok.num_rows,
            rows_errored=0 if bad is None else bad.num_rows,
            data_files=data_files,
            error_files=error_files,
            run_id=run_id,
            committed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            metric_sums=sums,
            stats=shard.counters.as_dict(),
            error_causes=_error_causes(bad),
            files_failed=0 if bad is None else len(set(bad.filter(pc.less(bad.column("source_row"), 0))
                                                       .column("source_uri").to_pylist())),
            row_groups=shard.row_groups,
            input_bytes=shard.input_bytes,
        )
        tmp = self._path(STAGING_DIR, run_id, "commit", f"{shard_key}.json")
        write_json(self.fs, tmp, manifest.to_json())
        final = self._path(COMMITS_DIR, f"{shard_key}.json")
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.mv(tmp, final)
        staged = self._path(STAGING_DIR, run_id, shard_key)
        if self.fs.exists(staged):
            self.fs.rm(staged, recursive=True)
        return manifest

    def _merged(self, shard: StagedShard) -> tuple[pa.Table | None, pa.Table | None]:
        """A shard's staged ok and error rows, each row once; raises CommitError unless every
        row index 0..n-1 is in exactly one of them."""
        ok, bad = _dedupe(self._read(shard.ok_paths)), _dedupe(self._read(shard.error_paths))
        seen_ok = set(ok.column("row_index").to_pylist()) if ok is not None else set()
        seen_bad = set(bad.column("row_index").to_pylist()) if bad is not None else set()
        if seen_ok & seen_bad or (seen_ok | seen_bad) != set(range(shard.shard_rows)):
            raise CommitError(
                f"shard {shard.key} ({shard.inputs[:3]}...): staged rows do not match its {shard.shard_rows} "
                f"input rows (ok {len(seen_ok)}, errored {len(seen_bad)}, overlap "
                f"{len(seen_ok & seen_bad)}); not committed. This is a bug; rerun with "
                "output.mode=resume to redo the shard"
            )
        return ok, bad

    def _place(self, table: pa.Table, rel: str, run_id: str) -> str:
        """Write `table` as the final file `rel`: staged under '_' first, then moved (a local
        rename is atomic, and on an object store the final object is created whole by one copy)."""
        tmp = self._path(STAGING_DIR, run_id, "commit", rel.replace("/", "-"))
        write_parquet(self.fs, tmp, table)
        final = self._path(rel)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        self.fs.mv(tmp, final)
        return rel

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
                write_parquet(self.fs, f"{base}/part-empty.parquet", schema.empty_table())
        self.write_summary(summary)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """(Re)write _summary.json."""
        write_json(self.fs, self._path(SUMMARY_FILE), dict(summary))

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


def _differences(before: Any, now: Mapping[str, Any] | None, limit: int = 4) -> str:
    """'input.files_per_shard 20 -> 256, ...': the dotted keys whose values differ
    between two fingerprint sources ('' when either is unknown)."""
    if not isinstance(before, Mapping) or not now:
        return ""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(data, Mapping):
            return {prefix: data}
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out

    a, b = flat(before), flat(now)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def show(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    said = ", ".join(f"{k} {show(a.get(k))} -> {show(b.get(k))}" for k in keys[:limit])
    return said + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _error_causes(errors: pa.Table | None) -> dict[str, list]:
    """cause -> [rows, first message, that row's id] of a shard's error rows."""
    out: dict[str, list] = {}
    if errors is None:
        return out
    ids = errors.column("id").to_pylist() if "id" in errors.column_names else [None] * errors.num_rows
    for cause, message, rid in zip(errors.column("cause").to_pylist(), errors.column("message").to_pylist(), ids,
                                   strict=True):
        entry = out.setdefault(cause or "unknown", [0, message or "", rid])
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
