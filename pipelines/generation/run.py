"""The generation pipeline on Ray Data: list shards -> read -> decode -> generate -> stage -> commit."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from combiner_core import CombinerError, GenerationParams, load_preprocessor

from ..readers import ReaderOptions, list_input_files, plan_shards
from ..uris import absolute_uri
from . import faults
from .commit import ERRORS_DIR, SUMMARY_FILE, OutputStore, ShardManifest
from .stages import (
    GenerateWorker,
    Task,
    params_hash,
    preprocess_batch,
    read_shard_batch,
    stage_batch,
)

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a run did, and the state of its whole output (all runs that wrote it)."""

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
    reference_rows: int = 0
    exact_match_rate: float | None = None
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_model(
    task: Task, model_uri: str, *, trust_remote_code: bool, storage_options: Mapping[str, Any] | None
) -> None:
    """On the driver, before Ray starts: model.uri names a combiner of the modality the job needs.

    Loads only its config and tokenizer / image processor (no weights), so a wrong
    URI fails in seconds rather than after the actor pool has started.
    """
    try:
        pre = load_preprocessor(
            model_uri, trust_remote_code=trust_remote_code, storage_options=dict(storage_options or {}) or None
        )
    except CombinerError as exc:
        raise ModelSpecError(f"model.uri {model_uri}: {exc}") from exc
    want = "image" if task == "caption" else "text"
    if pre.modality != want:
        raise ModelSpecError(
            f"model.uri {model_uri} is a {pre.modality} combiner ({pre.layout}), but {task} needs "
            f"{'an image' if want == 'image' else 'a text'} combiner; point model.uri at one"
        )


class ModelSpecError(ValueError):
    """model.uri cannot serve this job."""


def run_generation(
    *,
    task: Task,
    input_uri: str,
    reader: ReaderOptions,
    files_per_shard: int,
    output_uri: str,
    output_mode: str,
    model_uri: str,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    params: GenerationParams,
    batch_size: int,
    workers: int,
    num_gpus: float,
    worker_cpus: float,
    preprocess_cpus: float,
    truncation: bool = True,
    spec_hash: str,
    fingerprint: str,
    storage_options: Mapping[str, Any] | None = None,
    on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = None,
) -> JobSummary:
    """Run one generation job to completion and return its summary.

    Shards already committed in output_uri (output_mode=resume) are skipped; when
    none remain, no Ray work and no model loading happen. `ray_init` is called only
    when there is work to do (jobs pass ray.init; tests pass nothing and init Ray).
    """
    start = time.time()
    # Workers may run in another folder (ray job submit's working_dir): make paths absolute.
    input_uri, output_uri = absolute_uri(input_uri), absolute_uri(output_uri)
    if "://" not in model_uri and os.path.exists(os.path.expanduser(model_uri)):
        model_uri = absolute_uri(model_uri)
    reader = replace(reader, root=input_uri)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    # Before output.mode touches anything (overwrite deletes the old output): a bad
    # model.uri must not cost the user their previous results.
    check_model(task, model_uri, trust_remote_code=trust_remote_code, storage_options=storage_options)
    store = OutputStore(output_uri, storage_options=storage_options)
    committed = store.prepare(mode=output_mode, fingerprint=fingerprint)
    files, ignored = list_input_files(
        input_uri, format=reader.format, extensions=reader.extensions, storage_options=dict(storage_options or {})
    )
    if ignored:
        log.warning(
            "input.uri %s: %d file(s) do not look like %s inputs and were skipped, e.g. %s",
            input_uri, len(ignored), reader.format, ignored[:3],
        )
    done_inputs = {f for m in committed.values() for f in m.inputs}
    shards = plan_shards([f for f in files if f not in done_inputs], format=reader.format, files_per_shard=files_per_shard)
    print(
        f"[{task}] {len(files)} input file(s); {len(committed)} shard(s) already committed; "
        f"{len(shards)} shard(s) to process -> {output_uri}",
        flush=True,
    )
    rows_now = 0
    new_commits = 0
    if shards:
        if ray_init is not None:
            ray_init()
        rows_now, new_commits = _process(
            task=task, shards=shards, reader=reader, store=store, run_id=run_id,
            model_uri=model_uri, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
            params=params, batch_size=batch_size, workers=workers, num_gpus=num_gpus,
            worker_cpus=worker_cpus, preprocess_cpus=preprocess_cpus, truncation=truncation,
            lineage={"model_uri": model_uri, "spec_hash": spec_hash, "params_hash": params_hash(params)},
            on_commit=on_commit, committed=committed,
        )
    manifests = store.committed()
    seconds = time.time() - start
    rows_in = sum(m.rows_in for m in manifests.values())
    reference_rows = sum(m.reference_rows for m in manifests.values())
    summary = JobSummary(
        rows_in=rows_in,
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
        reference_rows=reference_rows,
        exact_match_rate=(
            round(sum(m.exact_matches for m in manifests.values()) / reference_rows, 4)
            if reference_rows
            else None
        ),
        run_id=run_id,
    )
    store.finish(summary.as_dict())
    return summary


def _process(
    *,
    task: Task,
    shards: list,
    reader: ReaderOptions,
    store: OutputStore,
    run_id: str,
    model_uri: str,
    allow_pickle: bool,
    trust_remote_code: bool,
    params: GenerationParams,
    batch_size: int,
    workers: int,
    num_gpus: float,
    worker_cpus: float,
    preprocess_cpus: float,
    truncation: bool,
    lineage: dict[str, str],
    on_commit: Callable[[ShardManifest], None] | None,
    committed: Mapping[str, ShardManifest],
) -> tuple[int, int]:
    import ray.data

    by_key = {s.key: s for s in shards}
    items = [{"shard_key": s.key, "files": list(s.files)} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_shard_batch, batch_size=1, batch_format="numpy", fn_kwargs={"options": reader},
        num_cpus=preprocess_cpus, max_retries=-1,
    )
    # max_retries=-1: a task lost with its node is retried (application errors are not:
    # bad rows never raise). On preprocessing it also keeps Ray Data from fusing it into
    # the generation actors (it fuses ops whose remote args are equal): decoding and
    # tokenizing belong on CPU tasks, so an actor (a GPU) only generates.
    ds = ds.map_batches(
        preprocess_batch, batch_size=batch_size, batch_format="numpy",
        fn_kwargs={"task": task, "model_uri": model_uri, "trust_remote_code": trust_remote_code, "truncation": truncation},
        num_cpus=preprocess_cpus, max_retries=-1,
    )
    ds = ds.map_batches(
        GenerateWorker,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "task": task,
            "model_uri": model_uri,
            "allow_pickle": allow_pickle,
            "trust_remote_code": trust_remote_code,
            "params": params.model_dump(mode="json"),
            "num_gpus": num_gpus,
        },
        compute=ray.data.ActorPoolStrategy(size=workers),
        # Fault injection (tests only, see faults.py) must reach the actor processes.
        runtime_env={"env_vars": {faults.ENV: os.environ[faults.ENV]}} if os.environ.get(faults.ENV) else None,
        num_gpus=num_gpus or None,
        num_cpus=worker_cpus,
    )
    ds = ds.map_batches(
        stage_batch,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={
            "output_uri": store.uri,
            "run_id": run_id,
            "lineage": lineage,
            "storage_options": store.storage_options,
        },
        num_cpus=preprocess_cpus,
        max_retries=-1,
    )
    pending: dict[str, dict[str, Any]] = {}
    rows_now = 0
    commits = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for rec in batch.to_pylist():
            state = pending.setdefault(
                rec["shard_key"], {"rows": 0, "ok": [], "err": [], "shard_rows": rec["shard_rows"]}
            )
            state["rows"] += rec["rows"]
            if rec["ok_path"]:
                state["ok"].append(rec["ok_path"])
            if rec["error_path"]:
                state["err"].append(rec["error_path"])
            if state["rows"] >= state["shard_rows"]:
                commits += 1
                manifest = store.commit_shard(
                    shard_key=rec["shard_key"], inputs=list(by_key[rec["shard_key"]].files),
                    shard_rows=state["shard_rows"], ok_paths=state["ok"], error_paths=state["err"],
                    run_id=run_id, commit_number=commits,
                )
                rows_now += manifest.rows_in
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
    return rows_now, commits
