"""Running a plan: list shards -> Ray Data stages -> commit each finished shard -> summary.

The driver owns the output: it applies output.mode, skips shards already committed,
commits each shard once all its rows are staged, and writes _summary.json last.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from combiner_core.storage import storage_access

from ..errors import JobError
from ..preflight import PreflightError
from ..reading import (
    InputChangedError,
    InputListing,
    Shard,
    duplicate_rows,
    ids_can_repeat,
    plan_shards,
)
from ..session import check_private_cpus, init_ray, warn_cluster_cpus
from .gallery import write_gallery
from .output import (
    ERRORS_DIR,
    SUMMARY_FILE,
    Committer,
    Lease,
    OutputStore,
    ShardManifest,
    changed_inputs,
    committed_inputs,
)
from .plan import JobPlan
from .preflight import check_input, preflight
from .specs import JobSpec
from .summary import JobSummary

log = logging.getLogger(__name__)


def run_job(
    spec: JobSpec,
    *,
    on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
    verbose: bool = False,
) -> JobSummary:
    """Run a generation-pipeline job spec (any task kind) to completion.

    Raises PreflightError (every problem with model, input and output) before anything
    is written.
    """
    checked = preflight(spec)
    return run_plan(checked.plan, listing=checked.listing, on_commit=on_commit, ray_init=ray_init, verbose=verbose)


def run_plan(
    plan: JobPlan,
    *,
    listing: InputListing | None = None,
    on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
    verbose: bool = False,
) -> JobSummary:
    """Run one job to completion and return its summary.

    `listing` is the input files preflight found (listed again when None). Shards
    already committed in the output (output.mode=resume) are skipped; when none
    remain, no Ray work and no model loading happen. `ray_init` is called only when
    there is work to do (jobs start or join Ray; tests pass None and own their Ray).
    """
    if listing is None:
        listing, problems = check_input(plan.reader)
        if listing is None or problems:
            raise PreflightError("job", problems)
    return _JobRun(plan, listing, on_commit=on_commit, ray_init=ray_init, verbose=verbose).run()


class _JobRun:
    """One run of a plan on the driver: list, take the output's lease, process, summarize."""

    def __init__(
        self,
        plan: JobPlan,
        listing: InputListing,
        *,
        on_commit: Callable[[ShardManifest], None] | None,
        ray_init: Callable[[], None] | None,
        verbose: bool,
    ) -> None:
        self.plan, self.listing = plan, listing
        self.on_commit, self.ray_init, self.verbose = on_commit, ray_init, verbose
        self.start = time.time()
        self.timings: dict[str, float] = {}
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.store = OutputStore(plan.output_uri, schema=plan.output_schema, storage_options=plan.storage_options)
        self.lease = Lease(self.store.fs, self.store.root, self.store.uri, run_id=self.run_id)
        self.cpus = plan.resources.cpu_demand()

    def run(self) -> JobSummary:
        listing = self.listing
        if listing.ignored:
            log.warning(
                "input.uri %s: %d file(s) do not look like %s inputs and were skipped, e.g. %s",
                self.plan.reader.root, len(listing.ignored), self.plan.reader.format, listing.ignored[:3],
            )
        check_private_cpus(self.cpus)  # before anything is written or deleted
        with storage_access(self.plan.output_uri, action="write"):
            self.lease.acquire()  # before output.mode touches anything: overwrite deletes
        try:
            return self._run_owned(listing)
        finally:
            self.lease.release()

    def _run_owned(self, listing: InputListing) -> JobSummary:
        """What runs while this driver holds the output's lease."""
        plan, store, timings = self.plan, self.store, self.timings
        files, ignored = listing.files, listing.ignored
        with storage_access(plan.output_uri, action="write"):
            committed = store.prepare(mode=plan.output_mode, fingerprint=plan.fingerprint,
                                      weights_id=plan.model.weights_id, fingerprint_of=plan.fingerprint_of)
        changed = changed_inputs(committed.values(), listing.sizes)
        if changed:
            raise InputChangedError(
                f"input.uri: the input files of {len(changed)} committed shard(s) changed size since they were committed, so "
                f"their new rows would never be read ({'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}). "
                "Put new data in new files (a resume reads those), or rerun with output.mode=overwrite to redo "
                "the output"
            )
        # A file is done when committed whole, or when committed ranges cover all its row
        # groups; of a file committed in part, only the row groups not committed are planned.
        done_inputs, partly = committed_inputs(committed.values())
        shards = plan_shards(
            [f for f in files if f not in done_inputs], format=plan.reader.format,
            files_per_shard=plan.files_per_shard, sizes=listing.sizes, shard_bytes=plan.shard_bytes,
            committed=partly, storage_options=plan.reader.storage_options,
        )
        log.info(
            "[%s] %d input file(s); %d shard(s) already committed; %d shard(s) to process -> %s",
            plan.task.name, len(files), len(committed), len(shards), plan.output_uri,
        )
        timings["plan_s"] = time.time() - self.start
        committer = None
        if shards:
            t = time.time()
            if self.ray_init is not None:
                self.ray_init()
            timings["ray_start_s"] = time.time() - t
            warn_cluster_cpus(self.cpus)
            t = time.time()
            duplicates = duplicate_rows(plan.reader, done=_committed_shards(committed, done_inputs, files), todo=shards,
                                        committed_duplicates=lambda: store.duplicate_rows(committed))
            if ids_can_repeat(plan.reader):
                timings["duplicate_ids_s"] = time.time() - t
            committer = self._process(shards, duplicates)
        return self._summarize(committed, committer, files=files, files_ignored=len(ignored))

    def _summarize(
        self, committed: dict[str, ShardManifest], committer: Committer | None, *, files: list[str], files_ignored: int,
    ) -> JobSummary:
        """Write _summary.json (and _gallery.html), then _SUCCESS when every input is committed."""
        plan, store = self.plan, self.store
        t = time.time()
        manifests = store.committed()
        sums: dict[str, float] = {}
        causes: dict[str, dict[str, Any]] = {}
        for m in manifests.values():
            for k, v in m.metric_sums.items():
                sums[k] = sums.get(k, 0.0) + v
            for cause, (rows, example, *rest) in m.error_causes.items():  # manifests before ids: 2 items
                entry = causes.setdefault(cause, {"rows": 0, "example": example, "example_id": rest[0] if rest else None})
                entry["rows"] += rows
        seconds = time.time() - self.start
        rows_now = committer.rows if committer else 0
        summary = JobSummary(
            task=plan.task.name,
            rows_in=sum(m.rows_in for m in manifests.values()),
            rows_ok=sum(m.rows_ok for m in manifests.values()),
            rows_errored=sum(m.rows_errored for m in manifests.values()),
            seconds=round(seconds, 3),
            rows_per_s=round(rows_now / seconds, 3) if seconds > 0 else 0.0,
            output_uri=store.uri,
            errors_uri=store.uri_of(ERRORS_DIR),
            summary_uri=store.uri_of(SUMMARY_FILE),
            shards_total=len(manifests),
            shards_committed_before=len(committed),
            shards_committed_now=committer.commits if committer else 0,
            rows_processed_now=rows_now,
            files_ignored=files_ignored,
            run_id=self.run_id,
            metrics=plan.task.metrics(sums),
            stats=committer.counters.as_stats() if committer else {},
            error_causes=dict(sorted(causes.items(), key=lambda kv: -kv[1]["rows"])),
            max_error_rate=plan.max_error_rate,
            files_in=len({f for m in manifests.values() for f in m.inputs}),
            files_failed=sum(m.files_failed for m in manifests.values()),
        )
        # Every row failed, or more of them (or of the files, when a file fails as a whole
        # and its rows cannot be counted) than the spec allows: what succeeded stays
        # committed, but the output is not published as a success.
        # No row at all (empty files, an upload that failed) is no success either.
        summary.failed = summary.rows_ok == 0 or (summary.rows_errored > 0 and (
            summary.error_rate > plan.max_error_rate or summary.file_error_rate > plan.max_error_rate
        ))
        store.finish(summary.as_dict())
        if plan.gallery_rows:
            summary.gallery_uri = write_gallery(plan, summary, max_rows=plan.gallery_rows)
        self.timings["finish_s"] = time.time() - t
        summary.timings = {k: round(v, 3) for k, v in self.timings.items()}
        summary.timings["started_at"] = round(self.start, 3)  # epoch seconds: lines phases up with a wall clock
        # Written again with the finish time: _summary.json is the run's record.
        store.write_summary(summary.as_dict())
        if not summary.failed and committed_inputs(manifests.values())[0] >= set(files):
            store.mark_success()  # last of all
        return summary

    def _process(self, shards: list[Shard], duplicates: dict[str, list]) -> Committer:
        """Stream the Ray Data pipeline's records into the committer."""
        from .stages import build_dataset, quiet_progress

        plan, timings = self.plan, self.timings
        t0 = time.time()
        quiet_progress(self.verbose)
        committer = Committer(self.store, self.lease, shards, run_id=self.run_id,
                              metric_sums=plan.task.metric_sums, on_commit=self.on_commit)
        ds = build_dataset(plan, shards, run_id=self.run_id, duplicates=duplicates)
        for batch in _batches(ds):
            if "first_batch_s" not in timings:
                timings["first_batch_s"] = time.time() - t0
                # Rows in the first block of records: the steady state is what comes after.
                timings["first_batch_rows"] = float(sum(batch.column("rows").to_pylist()))
            committer.take(batch.to_pylist())
        committer.finish()
        timings["process_s"] = time.time() - t0
        timings["commit_s"] = committer.seconds
        return committer


def _committed_shards(committed: dict[str, ShardManifest], done: set[str], files: list[str]) -> list[Shard]:
    """The committed rows of the input as shards (the duplicate-id pass ranks them first):
    the files done, and the committed ranges of the files committed in part."""
    listed = set(files)
    shards = [Shard(files=(f,)) for f in sorted(done & listed)]
    for m in committed.values():
        uri = m.inputs[0] if m.inputs else ""
        if m.row_groups is not None and uri in listed and uri not in done:
            start, stop, of = m.row_groups
            shards.append(Shard(files=(uri,), row_groups=(start, stop), file_row_groups=of))
    return shards


class JobStoppedError(JobError, RuntimeError):
    """The pipeline stopped before every shard was done (a model that would not load on
    the actors, a failure Ray gave up on). What was committed stays; a rerun with
    output.mode=resume continues."""

    exit_code = 1


def _batches(ds: Any) -> Any:
    """The pipeline's record batches; a failure of the pipeline itself as JobStoppedError
    with its root cause's message (Ray wraps it in a few hundred lines of traceback)."""
    it = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - re-raised with its cause, below
            raise JobStoppedError(
                f"the job stopped: {_root_cause(exc).rstrip('.')}. What was committed stays; fix the cause and rerun with "
                "output.mode=resume"
            ) from exc
        yield batch


# "package.module.SomeError: message", the last line of a traceback Ray carries as text
_RAISED = re.compile(r"^\s*((?:[\w]+\.)*)(\w+(?:Error|Exception)): (.+)$")


def _root_cause(exc: BaseException) -> str:
    """The original failure's "Name: message", found in the exception chain or in the
    traceback text Ray wraps it in (an actor's __init__ error arrives as text); a Ray
    error's own line only when nothing else is there."""
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in chain):
            continue
        chain.append(e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    fallback = f"{type(chain[-1]).__name__}: {chain[-1]}".splitlines()[0]
    for e in reversed(chain):
        for line in reversed(str(e).splitlines()):
            m = _RAISED.match(line)
            if m and not m.group(1).startswith("ray."):
                return f"{m.group(2)}: {m.group(3)}"
    return fallback
