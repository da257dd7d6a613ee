"""Running a plan: list shards -> Ray Data stages -> commit each finished shard -> summary.

The driver owns the output: it applies output.mode, skips shards already committed,
commits each shard once all its rows are staged, and writes _summary.json last.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from combiner_core.storage import StorageAccessError, storage_access

from ..readers import InputListingError, input_extensions, list_input_files, plan_shards
from ..session import init_ray
from . import faults
from .commit import ERRORS_DIR, SUMMARY_FILE, OutputStore, ShardManifest
from .plan import InputSpecError, JobPlan, build_plan
from .specs import JobSpec

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a run did, and the state of its whole output (all runs that wrote it).

    `metrics` are the task's (e.g. exact_match over rows with a reference); `stats`
    the model stage's counters for the rows processed in this run (e.g.
    decoder_efficiency); `timings` the phases of this run in seconds.
    """

    task: str
    rows_in: int
    rows_ok: int
    rows_errored: int
    seconds: float
    rows_per_s: float
    output_uri: str
    errors_uri: str
    summary_uri: str
    shards_total: int
    shards_committed_before: int
    shards_committed_now: int
    rows_processed_now: int
    files_ignored: int
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_job(
    spec: JobSpec,
    *,
    on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
    verbose: bool = False,
) -> JobSummary:
    """Run a generation-pipeline job spec (any task kind) to completion."""
    return run_plan(build_plan(spec), on_commit=on_commit, ray_init=ray_init, verbose=verbose)


def run_plan(
    plan: JobPlan,
    *,
    on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
    verbose: bool = False,
) -> JobSummary:
    """Run one job to completion and return its summary.

    Shards already committed in the output (output.mode=resume) are skipped; when none
    remain, no Ray work and no model loading happen. `ray_init` is called only when
    there is work to do (jobs start or join Ray; tests pass None and own their Ray).
    """
    start = time.time()
    timings: dict[str, float] = {}
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    try:
        with storage_access(plan.reader.root, action="list"):
            files, ignored = list_input_files(
                plan.reader.root, format=plan.reader.format, extensions=plan.reader.extensions,
                storage_options=plan.reader.storage_options,
            )
    except (InputListingError, StorageAccessError) as exc:
        raise InputSpecError(f"input.uri: {exc}") from None
    if not files:
        raise InputSpecError(
            f"input.uri {plan.reader.root}: no {plan.reader.format} input files there (searched "
            f"{'the glob' if any(c in plan.reader.root for c in '*?[') else 'the folder, recursively'} "
            f"for names ending in {', '.join(input_extensions(plan.reader))}"
            + (f"; {len(ignored)} other file(s) were skipped, e.g. {ignored[0]}" if ignored else "")
            + "). Check the path and input.format"
        )
    if ignored:
        log.warning(
            "input.uri %s: %d file(s) do not look like %s inputs and were skipped, e.g. %s",
            plan.reader.root, len(ignored), plan.reader.format, ignored[:3],
        )
    store = OutputStore(plan.output_uri, schema=plan.output_schema, storage_options=plan.storage_options)
    with storage_access(plan.output_uri, action="write"):
        committed = store.prepare(mode=plan.output_mode, fingerprint=plan.fingerprint)
    done_inputs = {f for m in committed.values() for f in m.inputs}
    shards = plan_shards(
        [f for f in files if f not in done_inputs], format=plan.reader.format, files_per_shard=plan.files_per_shard
    )
    log.info(
        "[%s] %d input file(s); %d shard(s) already committed; %d shard(s) to process -> %s",
        plan.task.name, len(files), len(committed), len(shards), plan.output_uri,
    )
    timings["plan_s"] = time.time() - start
    rows_now = new_commits = 0
    stats: dict[str, float] = {}
    if shards:
        t = time.time()
        if ray_init is not None:
            ray_init()
        timings["ray_start_s"] = time.time() - t
        rows_now, new_commits, stats = _process(plan, shards, store, run_id, on_commit, timings, verbose)
    t = time.time()
    manifests = store.committed()
    sums: dict[str, float] = {}
    for m in manifests.values():
        for k, v in m.metric_sums.items():
            sums[k] = sums.get(k, 0.0) + v
    seconds = time.time() - start
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
        shards_committed_now=new_commits,
        rows_processed_now=rows_now,
        files_ignored=len(ignored),
        run_id=run_id,
        metrics=plan.task.metrics(sums),
        stats=_efficiencies(stats),
    )
    store.finish(summary.as_dict())
    timings["finish_s"] = time.time() - t
    summary.timings = {k: round(v, 3) for k, v in timings.items()}
    summary.timings["started_at"] = round(start, 3)  # epoch seconds: lines the phases up with a wall clock
    # Written again with the finish time: _summary.json is the run's record.
    store.write_summary(summary.as_dict())
    return summary


def _efficiencies(stats: dict[str, float]) -> dict[str, float]:
    """Counters plus the ratios a reader wants (decoder / encoder efficiency)."""
    out = {k: round(v, 3) for k, v in stats.items()}
    for name in ("decoder", "encoder"):
        total, useful = stats.get(f"{name}_positions"), stats.get(f"{name}_useful_positions")
        if total:
            out[f"{name}_efficiency"] = round(useful / total, 4)
    return out


def _process(
    plan: JobPlan,
    shards: list,
    store: OutputStore,
    run_id: str,
    on_commit: Callable[[ShardManifest], None] | None,
    timings: dict[str, float],
    verbose: bool,
) -> tuple[int, int, dict[str, float]]:
    """Stream the Ray Data pipeline's records, committing each shard when it is complete."""
    from .stages import build_dataset, quiet_progress

    t0 = time.time()
    quiet_progress(verbose)
    by_key = {s.key: s for s in shards}
    ds = build_dataset(plan, shards, run_id=run_id)
    pending: dict[str, dict[str, Any]] = {}
    rows_now = commits = 0
    stats: dict[str, float] = {}
    commit_seconds = 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        timings.setdefault("first_batch_s", time.time() - t0)
        for rec in batch.to_pylist():
            state = pending.setdefault(
                rec["shard_key"], {"rows": 0, "ok": [], "err": [], "stats": {}, "shard_rows": rec["shard_rows"]}
            )
            state["rows"] += rec["rows"]
            if rec["ok_path"]:
                state["ok"].append(rec["ok_path"])
            if rec["error_path"]:
                state["err"].append(rec["error_path"])
            for k, v in (json.loads(rec["stats"]) if rec["stats"] else {}).items():
                state["stats"][k] = state["stats"].get(k, 0.0) + v
            if state["rows"] < state["shard_rows"]:
                continue
            tc = time.time()
            commits += 1
            manifest = store.commit_shard(
                shard_key=rec["shard_key"], inputs=list(by_key[rec["shard_key"]].files),
                shard_rows=state["shard_rows"], ok_paths=state["ok"], error_paths=state["err"],
                run_id=run_id, commit_number=commits, metric_sums=plan.task.metric_sums, stats=state["stats"],
            )
            commit_seconds += time.time() - tc
            rows_now += manifest.rows_in
            for k, v in state["stats"].items():
                stats[k] = stats.get(k, 0.0) + v
            del pending[rec["shard_key"]]
            by_key.pop(rec["shard_key"])
            faults.maybe_kill("driver_after_commit", commits)
            if on_commit is not None:
                on_commit(manifest)
    if pending:
        raise RuntimeError(
            f"Ray Data finished but {len(pending)} shard(s) got only part of their rows "
            f"({sorted(pending)[:3]}...); nothing of them was committed. Rerun with output.mode=resume"
        )
    # Shards whose files hold no rows (an empty JSONL file) yield no blocks: commit them
    # empty so a resume does not list them again.
    for key, shard in list(by_key.items()):
        commits += 1
        store.commit_shard(
            shard_key=key, inputs=list(shard.files), shard_rows=0, ok_paths=[], error_paths=[],
            run_id=run_id, commit_number=commits,
        )
    timings["process_s"] = time.time() - t0
    timings["commit_s"] = commit_seconds
    return rows_now, commits, stats
