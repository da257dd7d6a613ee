"""Ray Data stages of a generation job.

read_shard_batch and preprocess_batch are plain functions (CPU tasks); GenerateWorker is
the actor class that loads the combiner once and generates batch by batch;
stage_batch writes each block's results as staged Parquet files for the commit
protocol (see commit.py). Rows carry error_stage/error_cause/error_message from the
first stage that rejected them, and every later stage passes such rows through.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from combiner_core import (
    GenerationParams,
    InputError,
    Preprocessor,
    collate_token_ids,
    decode_image,
    generate,
    image_to_pixel_values,
    load_combiner,
    load_preprocessor,
    tokenize_text,
)

from ..readers import ReaderOptions, Shard, read_shard
from ..specs import spec_hash
from . import faults
from .commit import stage_results

log = logging.getLogger(__name__)
Task = Literal["caption", "summarize"]


def params_hash(params: GenerationParams) -> str:
    """sha256 of the generation parameters' canonical JSON (output lineage)."""
    return spec_hash(params)


def read_shard_batch(batch: dict[str, np.ndarray], *, options: ReaderOptions) -> pa.Table:
    """Ray Data CPU stage: shard descriptions -> their rows (readers.ROW_SCHEMA)."""
    tables = [
        read_shard(Shard(files=tuple(str(f) for f in files), key=str(key)), options)
        for files, key in zip(batch["files"], batch["shard_key"], strict=True)
    ]
    return pa.concat_tables(tables)


def _error_columns(batch: dict[str, np.ndarray]) -> tuple[list, list, list]:
    """Lists of error stage/cause/message; "" means the row is fine so far."""

    def clean(values: np.ndarray) -> list[str]:
        return [v if isinstance(v, str) else "" for v in values]

    return clean(batch["error_stage"]), clean(batch["error_cause"]), clean(batch["error_message"])


@functools.lru_cache(maxsize=4)
def _preprocessor(model_uri: str, trust_remote_code: bool) -> Preprocessor:
    """One tokenizer / image processor per CPU worker process, not one per batch."""
    return load_preprocessor(model_uri, trust_remote_code=trust_remote_code)


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    task: Task,
    model_uri: str,
    trust_remote_code: bool = False,
    truncation: bool = True,
) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: raw payloads -> model inputs, so the actors (GPUs) only generate.

    caption: image bytes -> decoded RGB -> the combiner's image processor ->
    `pixel_values` (n, C, H, W) float32. summarize: text bytes -> UTF-8 check ->
    the combiner's tokenizer (truncated to the encoder's limit, or rejected when
    truncation is off) -> `input_ids` (one int64 array per row), `input_tokens`
    (length before truncation) and `truncated`. A row that fails gets
    error_stage/cause/message from combiner_core's InputError; its inputs are empty.
    """
    pre = _preprocessor(model_uri, trust_remote_code)
    stages, causes, messages = _error_columns(batch)
    payloads = batch["payload"]
    n = len(payloads)
    out = {k: v for k, v in batch.items() if k != "payload"}
    if task == "caption":
        images: dict[int, Image.Image] = {}
        for i in range(n):
            if stages[i]:
                continue
            try:
                images[i] = decode_image(payloads[i])
            except InputError as exc:
                stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
        pixels = None
        if images:
            values = image_to_pixel_values(pre.image_processor, list(images.values())).numpy()
            pixels = np.zeros((n, *values.shape[1:]), dtype=np.float32)
            pixels[list(images)] = values
        else:
            # Shape for an all-error batch: any row of a later batch may not match,
            # but no actor reads pixels of error rows, and the column is dropped there.
            pixels = np.zeros((n, 0), dtype=np.float32)
        out["pixel_values"] = pixels
    else:
        ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
        in_tokens = np.full(n, -1, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        for i in range(n):
            if stages[i]:
                continue
            try:
                tok = tokenize_text(
                    pre.tokenizer, bytes(payloads[i]), max_tokens=pre.max_input_tokens, truncation=truncation
                )
            except InputError as exc:
                stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
                continue
            ids[i] = np.asarray(tok.input_ids, dtype=np.int64)
            in_tokens[i], truncated[i] = tok.original_num_tokens, tok.truncated
        out.update(input_ids=_object_array(ids), input_tokens=in_tokens, truncated=truncated)
    out.update(
        error_stage=_object_array(stages), error_cause=_object_array(causes), error_message=_object_array(messages)
    )
    return out


def _object_array(values: list) -> np.ndarray:
    """A 1-D object array, even when every element is an array of the same length."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class GenerateWorker:
    """Ray Data actor: loads the combiner once, then generates for each batch.

    Inputs arrive preprocessed (see preprocess_batch). Output columns added to each
    row: text, score, candidates (JSON list of {text, score, num_tokens}),
    output_tokens, model_sha256.
    """

    def __init__(
        self,
        *,
        task: Task,
        model_uri: str,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        params: dict[str, Any],
        num_gpus: float = 0,
    ) -> None:
        import torch

        self.task = task
        self.params = GenerationParams.model_validate(params)
        device = "cpu"
        if num_gpus > 0:
            if torch.cuda.is_available():
                device = "cuda"
            else:
                log.warning("resources.num_gpus=%s but this worker sees no CUDA device; running on CPU", num_gpus)
        self.combiner = load_combiner(
            model_uri, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device
        )
        self.model_sha256 = self.combiner.weights_sha256 or ""
        self.batches = 0

    def _inputs(self, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, torch.Tensor]:
        if self.task == "caption":
            return {"pixel_values": torch.from_numpy(np.stack([batch["pixel_values"][i] for i in rows]))}
        return collate_token_ids(
            [batch["input_ids"][i] for i in rows], pad_token_id=self.combiner.preprocessor.input_pad_token_id
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        faults.maybe_kill("worker_batch", self.batches)
        if faults.active():
            import ray

            faults.maybe_pause("worker_pause", self.batches, ray.get_runtime_context().get_node_id())
        n = len(batch["id"])
        stages, causes, messages = _error_columns(batch)
        rows = [i for i in range(n) if not stages[i]]
        text: list[str] = [""] * n
        candidates: list[str] = [""] * n
        score = np.full(n, np.nan)
        out_tokens = np.full(n, -1, dtype=np.int64)
        if rows:
            results = generate(self.combiner, self._inputs(batch, rows), self.params)
            for i, cands in zip(rows, results, strict=True):
                best = cands[0]
                text[i], score[i], out_tokens[i] = best.text, best.score, best.num_tokens
                candidates[i] = json.dumps(
                    [{"text": c.text, "score": c.score, "num_tokens": c.num_tokens} for c in cands]
                )
        out = {k: v for k, v in batch.items() if k not in ("pixel_values", "input_ids")}
        if "input_tokens" not in out:  # captions have no input tokens
            out.update(input_tokens=np.full(n, -1, dtype=np.int64), truncated=np.zeros(n, dtype=bool))
        out.update(
            text=_object_array(text),
            candidates=_object_array(candidates),
            score=score,
            output_tokens=out_tokens,
            model_sha256=_object_array([self.model_sha256] * n),
        )
        return out


def stage_batch(
    block: pa.Table,
    *,
    output_uri: str,
    run_id: str,
    lineage: dict[str, str],
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """Ray Data CPU stage: write a block's ok rows and error rows as staged Parquet.

    Returns one record per shard in the block (shard_key, shard_rows, rows, paths);
    the driver commits a shard once records cover all its rows.
    """
    produced_at = datetime.now(UTC)
    return stage_results(
        block,
        output_uri=output_uri,
        run_id=run_id,
        lineage=lineage,
        produced_at=produced_at,
        storage_options=storage_options,
        writer_pid=os.getpid(),
    )
