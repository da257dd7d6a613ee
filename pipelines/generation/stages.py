"""The stage builder: a JobPlan becomes Ray Data stages, the same for every task kind.

    shard groups --read_and_preprocess (CPU tasks: read files, decode / tokenize)-->
    --ModelWorker (actor pool: loads the combiner once, task.run)-->
    --Stager (zero-CPU actors: staged Parquet under output/_staging/)--> records for the driver

The CPU stage is a plain function; the model stage is a class that loads the model in
`__init__` (Ray Data's callable-class actors), and staging is a small class too (see
build_dataset for why it runs on actors). What differs between tasks is the
adapter in the plan (tasks/), never this file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import faults
from ..reading import Shard, iter_shard
from ..session import shape_blocks
from .output import stage_results
from .tasks.base import check_stage_pixels, error_columns, object_array, stage_preprocessor

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
    """CPU stage: a group of shard descriptions -> their rows -> the task's model inputs.

    Shards are read as streams of small tables (reading.iter_shard) and preprocessed
    in chunks of batch_size rows, or fewer when their payloads pass _CHUNK_BYTES; a
    chunk may span shards (rows carry their shard key). So neither a shard nor a batch
    of large images is ever held (or decoded) all at once, and the model actor gets
    whole batches from small shards.
    """
    pending: list[pa.Table] = []
    held = held_bytes = 0
    for group in batch["shards"]:
        for entry in json.loads(group):
            shard = Shard.described(entry["shard"])
            duplicates = {(uri, int(row)): why for uri, row, why in entry["duplicates"]}
            for rows in iter_shard(shard, plan.reader, duplicates=duplicates):
                pending.append(rows)
                held += rows.num_rows
                held_bytes += _payload_bytes(rows)
                while held >= plan.batch_size or held_bytes >= _CHUNK_BYTES:
                    table = pa.concat_tables(pending)
                    n = _chunk_rows(table, plan.batch_size)
                    yield _preprocess(plan, table.slice(0, n))
                    rest = table.slice(n)
                    pending, held, held_bytes = [rest], rest.num_rows, _payload_bytes(rest)
    if held:
        yield _preprocess(plan, pa.concat_tables(pending))


# Payload bytes a chunk of rows for preprocessing holds at most (one row at least). A
# chunk's images are decoded together: 256 photos of 5 MB in one batch_size chunk
# would be 1.3 GB encoded and ~9 GB as pixels (12 MP RGB) in one read task; 16 MiB is
# three such photos (~110 MB decoded), or 160 web images of 100 KB, still a chunk
# whose per-chunk costs do not show. The model stage batches chunks back to
# batch_size rows (Ray Data bundles blocks up to its batch_size).
_CHUNK_BYTES = 16 * 1024**2


def _payload_bytes(rows: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(rows.column("payload"))).as_py() or 0)


def _chunk_rows(table: pa.Table, batch_size: int) -> int:
    """Rows of `table` for the next chunk: up to batch_size and _CHUNK_BYTES of payload."""
    lengths = pc.fill_null(pc.binary_length(table.column("payload")), 0).to_numpy()
    within = int(np.searchsorted(np.cumsum(lengths), _CHUNK_BYTES, side="right"))
    return max(1, min(batch_size, within, table.num_rows))


def _preprocess(plan: JobPlan, chunk: pa.Table) -> dict[str, np.ndarray]:
    columns = {name: chunk.column(name).to_numpy(zero_copy_only=False) for name in chunk.column_names}
    pre = stage_preprocessor(plan.task, plan.model.uri, plan.model.trust_remote_code)  # one per process (lru_cache)
    return plan.task.preprocess(columns, pre)


# A read task's share of the input: consecutive shards until they hold this many bytes,
# at most _GROUP_SHARDS of them. Each Ray task costs tens of milliseconds of scheduling
# on top of its work, and one read task at a time runs per reserved CPU: with small
# files (measured: 200-row Parquet files of shape images, 0.07 s of decoding each) the
# reader sat idle half the time and the job ran at 0.8 of the bare path; grouping 16 of
# them made it 1.1. Large files (and image shards of large images) stay one per task, so
# a big input still spreads over every CPU of a cluster.
_GROUP_BYTES = 16 * 1024**2
_GROUP_SHARDS = 16


def read_groups(shards: list[Shard], duplicates: dict[str, list]) -> list[str]:
    """Shards grouped for read tasks, each group as JSON
    [{"shard": Shard.describe(), "duplicates": [[uri, row, why], ...]}, ...]."""
    groups: list[list] = []
    current: list = []
    nbytes = 0
    for s in shards:
        current.append({"shard": s.describe(), "duplicates": duplicates.get(s.key, [])})
        nbytes += s.nbytes
        if nbytes >= _GROUP_BYTES or len(current) >= _GROUP_SHARDS:
            groups.append(current)
            current, nbytes = [], 0
    if current:
        groups.append(current)
    return [json.dumps(g) for g in groups]


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
    (the batch's ModelCounters as JSON, on its first row only).
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
        check_stage_pixels(plan.task, model.uri, model.trust_remote_code, self.combiner.image_processor)
        self.engine = plan.task.setup(self.combiner, quantize=model.quantize)
        self.fields = plan.task.output_fields()
        self.model_sha256 = self.combiner.weights_sha256 or ""
        self.counters = plan.task.counters(self.engine)
        self.batches = 0
        self._logged_failure = False  # the first failed model call's traceback is logged once

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.batches += 1
        faults.maybe_kill("worker_batch", self.batches)
        if faults.active():
            import ray

            faults.maybe_pause("worker_pause", self.batches, ray.get_runtime_context().get_node_id())
            faults.maybe_wait("worker_wait", self.batches)
        n = len(batch["id"])
        stages, causes, messages = error_columns(batch)
        rows = [i for i in range(n) if not stages[i]]
        values: dict[str, list] = {f.name: [None] * n for f in self.fields}
        failed: dict[int, tuple[str, str]] = {}
        for part, produced in self._run_isolating(batch, rows, failed):
            for name, column in produced.items():
                target = values[name]
                for i, v in zip(part, column, strict=True):
                    target[i] = v
        columns: dict[str, Any] = {name: batch[name] for name in _PASSTHROUGH}
        if failed:
            for i, (cause, message) in failed.items():
                stages[i], causes[i], messages[i] = "model", cause, message
            columns.update(
                error_stage=object_array(stages), error_cause=object_array(causes),
                error_message=object_array(messages),
            )
            first = min(failed)
            log.warning(
                "model stage: %d of %d row(s) in this batch failed and go to _errors (first: %s: %s)",
                len(failed), len(rows), batch["id"][first], failed[first][1],
            )
        for f in self.fields:
            columns[f.name] = pa.array(values[f.name], type=f.type)
        columns["model_sha256"] = pa.array([self.model_sha256] * n, pa.string())
        now = self.plan.task.counters(self.engine)
        delta, self.counters = now - self.counters, now
        # The batch's counters ride on its first row (Ray Data moves rows, nothing beside them).
        columns["model_stats"] = pa.array([delta.to_json()] + [""] * (n - 1), pa.string())
        return pa.table({k: (v if isinstance(v, pa.Array) else _arrow(v)) for k, v in columns.items()})

    def _run_isolating(
        self, batch: dict[str, np.ndarray], rows: list[int], failed: dict[int, tuple[str, str]]
    ) -> list[tuple[list[int], dict[str, list]]]:
        """task.run on `rows`; when it raises, on each half, down to the rows that fail alone.

        Returns (rows, outputs) for every part that ran; a row that fails on its own goes
        into `failed` as (cause, message), so one row the model cannot process (a numeric
        error, an input the model rejects, a GPU out of memory) costs that row, not the job.
        A batch with one bad row runs about twice (log2(batch) halvings, each re-running
        half of what is left).
        """
        if not rows:
            return []
        try:
            if faults.active():
                faults.maybe_fail_rows("model_rows", [str(batch["id"][i]) for i in rows])
            return [(rows, self.plan.task.run(self.engine, batch, rows))]
        except Exception as exc:  # noqa: BLE001 - isolated below; a row's failure is reported, not raised
            cause, message = model_error_cause(exc), f"{type(exc).__name__}: {exc}"[:2000]
            if not self._logged_failure:
                self._logged_failure = True
                log.warning("model stage: a model call on %d row(s) raised; isolating the failing rows",
                            len(rows), exc_info=True)
        _release_device_memory()
        if len(rows) == 1:
            failed[rows[0]] = (cause, message)
            return []
        mid = len(rows) // 2
        return self._run_isolating(batch, rows[:mid], failed) + self._run_isolating(batch, rows[mid:], failed)


def model_error_cause(exc: BaseException) -> str:
    """The errors table's cause for an exception from the model stage."""
    from combiner_core import InputError

    if isinstance(exc, InputError):
        return exc.cause
    text = f"{type(exc).__name__} {exc}".lower()
    if isinstance(exc, MemoryError) or "outofmemory" in text or "out of memory" in text:
        return "out_of_memory"  # torch.cuda.OutOfMemoryError, or a CPU allocation that failed
    if isinstance(exc, (FloatingPointError, ZeroDivisionError)) or re.search(r"\b(nan|inf)\b", text):
        return "numeric_error"  # e.g. sampling from probabilities that hold inf or nan
    return "model_error"


def _release_device_memory() -> None:
    """After a failed model call: give cached GPU blocks back (an OOM's retry needs them)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(list(values))
    return pa.array(values)


class Stager:
    """Ray Data actor: writes each block's ok and error rows as staged Parquet (output/staging.py)."""

    def __init__(self, *, plan: JobPlan, run_id: str) -> None:
        self.plan, self.run_id = plan, run_id

    def __call__(self, block: pa.Table) -> pa.Table:
        plan = self.plan
        return stage_results(
            block,
            output_uri=plan.output_uri,
            run_id=self.run_id,
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


def build_dataset(
    plan: JobPlan, shards: list[Shard], *, run_id: str, duplicates: dict[str, list] | None = None
) -> ray.data.Dataset:
    """The job's Ray Data pipeline over `shards`; its output is commit records (RECORD_SCHEMA).

    `duplicates` names, per shard key, rows whose id appeared earlier ([uri, row, why]).
    """
    import ray.data

    shape_blocks()  # each batch of model inputs leaves its read task as it is made
    # JSON: a shard's description mixes strings, lists and numbers (no one Arrow type).
    items = [{"shards": g} for g in read_groups(shards, duplicates or {})]
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
    # Staging writes one small Parquet file per block: I/O, not compute, so its actors
    # reserve no CPU. Ray Data gives CPUs to operators in pipeline order: when the read
    # tasks and the model actors hold every CPU of a node (2 CPUs: one reader, one
    # actor), a 1-CPU staging task got none until every read was done, so nothing was
    # committed until the end (measured: the first commit of a 32,000-row job came at 29
    # of its 32 s) and every output block waited in the object store. Zero-CPU *tasks*
    # would run, but as extra worker processes past the node's CPU count, which Ray
    # stops when idle, and with them the reader processes (each restart re-imports torch):
    # that ran four times slower. Long-lived actors avoid both. One per model actor keeps
    # up (a write takes milliseconds locally, tens on object storage; a batch takes longer).
    return ds.map_batches(
        Stager, batch_size=None, batch_format="pyarrow",
        fn_constructor_kwargs={"plan": plan, "run_id": run_id},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=r.workers),
        num_cpus=0,
    )
