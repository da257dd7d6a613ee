"""The stage builder: a JobPlan becomes Ray Data stages, the same for every task kind.

    shard descriptions --read_and_preprocess (CPU tasks: read files, decode / tokenize)-->
    --ModelWorker (actor pool: loads the combiner once, task.run)-->
    --stage_rows (CPU tasks: staged Parquet under output/_staging/)--> records for the driver

CPU stages are plain functions; the model stage is a class that loads the model in
`__init__` (Ray Data's callable-class actors). What differs between tasks is the
adapter in the plan (tasks/), never this file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .. import faults
from ..readers import Shard, read_shard, read_shard_ids
from .commit import stage_results
from .tasks.base import cached_preprocessor, error_columns

if TYPE_CHECKING:
    import ray.data

    from .plan import JobPlan

log = logging.getLogger(__name__)

# The columns every row keeps from the reader to the staging step.
_PASSTHROUGH = (
    "id", "shard_key", "shard_rows", "row_index", "source_uri", "source_row", "reference",
    "error_stage", "error_cause", "error_message",
)


def read_and_preprocess(batch: dict[str, np.ndarray], *, plan: JobPlan) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: shard descriptions -> their rows -> the task's model inputs.

    Yields batch_size rows at a time, so a shard of many rows is never decoded (or
    held as pixels) all at once.
    """
    pre = None
    for files, key, dups in zip(batch["files"], batch["shard_key"], batch["duplicates"], strict=True):
        duplicates = {(uri, int(row)): why for uri, row, why in json.loads(dups)}
        rows = read_shard(Shard(files=tuple(str(f) for f in files), key=str(key)), plan.reader, duplicates=duplicates)
        for start in range(0, rows.num_rows, plan.batch_size):
            chunk = rows.slice(start, plan.batch_size)
            columns = {name: chunk.column(name).to_numpy(zero_copy_only=False) for name in chunk.column_names}
            pre = pre or cached_preprocessor(plan.model.uri, plan.model.trust_remote_code)
            yield plan.task.preprocess(columns, pre)


# Host memory of a model actor besides its weights: a Python process with torch and
# transformers imported (about 0.5 GB resident, measured on this project's CPU jobs).
_ACTOR_BASE_MEMORY = 512 * 1024**2


def actor_memory(plan: JobPlan) -> int:
    """Bytes of host memory a model actor reserves: the runtime, plus the weights on CPU.

    A CPU actor holds its weights in host memory, so the reservation keeps a node from
    taking more actors than its memory holds. It also keeps Ray Data from fusing the
    CPU stage into the actors (it fuses operators with equal resource requests; see
    ray-project/ray#54433): decoding and tokenizing belong on CPU tasks, so an actor
    (a GPU) only runs the model.
    """
    weights = plan.model.weights_bytes if plan.resources.num_gpus == 0 else 0
    return _ACTOR_BASE_MEMORY + weights


class ModelWorker:
    """Ray Data actor: loads the combiner once, then runs the task's model call per batch.

    Returns a pyarrow table: the pass-through columns, the task's output columns
    (null for rows an earlier stage rejected), `model_sha256`, and `model_stats`
    (JSON of the task's counters for this batch, on its first row only).
    """

    def __init__(self, *, plan: JobPlan) -> None:
        import torch

        from combiner_core import load_combiner, resolve_dtype

        self.plan = plan
        resources = plan.resources
        device = "cpu"
        if resources.num_gpus > 0:
            if torch.cuda.is_available():
                device = "cuda"
            else:
                log.warning("resources.num_gpus=%s but this actor sees no CUDA device; running on CPU",
                            resources.num_gpus)
        # transformers' "Loading weights" progress bar, once per actor: noise in a job's log.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if device == "cpu":
            # Ray sets OMP_NUM_THREADS=1 in workers unless told otherwise; the actor
            # reserved worker_cpus cores, so its torch kernels may use that many.
            torch.set_num_threads(max(1, int(resources.worker_cpus)))
        model = plan.model
        self.combiner = load_combiner(
            model.uri, allow_pickle=model.allow_pickle, trust_remote_code=model.trust_remote_code,
            device=device, dtype=resolve_dtype(model.dtype, device),
        )
        self.runner = plan.task.setup(self.combiner)
        self.fields = plan.task.output_fields()
        self.model_sha256 = self.combiner.weights_sha256 or ""
        self.stats = plan.task.run_stats(self.runner)
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.batches += 1
        faults.maybe_kill("worker_batch", self.batches)
        if faults.active():
            import ray

            faults.maybe_pause("worker_pause", self.batches, ray.get_runtime_context().get_node_id())
            faults.maybe_wait("worker_wait", self.batches)
        n = len(batch["id"])
        stages, _, _ = error_columns(batch)
        rows = [i for i in range(n) if not stages[i]]
        values: dict[str, list] = {f.name: [None] * n for f in self.fields}
        if rows:
            produced = self.plan.task.run(self.runner, batch, rows)
            for name, column in produced.items():
                target = values[name]
                for i, v in zip(rows, column, strict=True):
                    target[i] = v
        columns: dict[str, Any] = {name: batch[name] for name in _PASSTHROUGH}
        for f in self.fields:
            columns[f.name] = pa.array(values[f.name], type=f.type)
        columns["model_sha256"] = pa.array([self.model_sha256] * n, pa.string())
        now = self.plan.task.run_stats(self.runner)
        delta = {k: v - self.stats.get(k, 0.0) for k, v in now.items()}
        self.stats = now
        columns["model_stats"] = pa.array([json.dumps(delta) if delta else ""] + [""] * (n - 1), pa.string())
        return pa.table({k: (v if isinstance(v, pa.Array) else _arrow(v)) for k, v in columns.items()})


def _arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(list(values))
    return pa.array(values)


def stage_rows(block: pa.Table, *, plan: JobPlan, run_id: str) -> pa.Table:
    """CPU stage: write a block's ok and error rows as staged Parquet (commit.py)."""
    return stage_results(
        block,
        output_uri=plan.output_uri,
        run_id=run_id,
        schema=plan.output_schema,
        lineage=plan.lineage,
        produced_at=datetime.now(UTC),
        storage_options=plan.storage_options,
    )


def quiet_progress(verbose: bool) -> None:
    """Ray Data's progress display only on a terminal or when asked (--verbose).

    Off a terminal Ray Data logs a progress dump every few seconds, which buries a
    job's own lines in a scheduler's log; the notice that it is off is dropped too.
    """
    import ray.data

    show = verbose or sys.stdout.isatty()
    ray.data.DataContext.get_current().enable_progress_bars = show
    if not show:
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if not verbose:
        # Ray Data's INFO lines (execution plan, start and end of each run) stay in its
        # log file under the session folder; the console keeps warnings and errors.
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


def read_ids(batch: dict[str, np.ndarray], *, plan: JobPlan) -> pa.Table:
    """CPU stage of the duplicate-id pass: a shard's ids and where they are."""
    tables = []
    for rank, files, key in zip(batch["rank"], batch["files"], batch["shard_key"], strict=True):
        ids = read_shard_ids(Shard(files=tuple(str(f) for f in files), key=str(key)), plan.reader)
        tables.append(ids.append_column("rank", pa.array([int(rank)] * ids.num_rows, pa.int64())))
    return pa.concat_tables(tables)


def build_dataset(
    plan: JobPlan, shards: list[Shard], *, run_id: str, duplicates: dict[str, list] | None = None
) -> ray.data.Dataset:
    """The job's Ray Data pipeline over `shards`; its output is commit records (RECORD_SCHEMA).

    `duplicates` names, per shard key, rows whose id appeared earlier ([uri, row, why]).
    """
    import ray.data

    dups = duplicates or {}
    # JSON: a list of [str, int, str] is not one Arrow type.
    items = [{"shard_key": s.key, "files": list(s.files), "duplicates": json.dumps(dups.get(s.key, []))}
             for s in shards]
    r = plan.resources
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Ray Data retries tasks lost with their node (max_retries=-1 is its default);
    # application errors never raise here (bad rows become error rows).
    ds = ds.map_batches(
        read_and_preprocess, batch_size=1, batch_format="numpy", fn_kwargs={"plan": plan},
        num_cpus=r.preprocess_cpus,
    )
    env = {faults.ENV: os.environ[faults.ENV]} if os.environ.get(faults.ENV) else None
    ds = ds.map_batches(
        ModelWorker,
        batch_size=plan.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"plan": plan},
        compute=ray.data.ActorPoolStrategy(size=r.workers),
        # Fault injection (tests only, see faults.py) must reach the actor processes.
        runtime_env={"env_vars": env} if env else None,
        num_gpus=r.num_gpus or None,
        num_cpus=r.worker_cpus,
        memory=actor_memory(plan),
    )
    return ds.map_batches(
        stage_rows, batch_size=None, batch_format="pyarrow", fn_kwargs={"plan": plan, "run_id": run_id},
        num_cpus=r.preprocess_cpus,
    )
