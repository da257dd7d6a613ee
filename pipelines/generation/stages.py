"""Ray Data stages of a generation job.

read_shard_batch and decode_batch are plain functions (CPU tasks); GenerateWorker is
the actor class that loads the combiner once and generates batch by batch;
stage_batch writes each block's results as staged Parquet files for the commit
protocol (see commit.py). Rows carry error_stage/error_cause/error_message from the
first stage that rejected them, and every later stage passes such rows through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from combiner_core import (
    GenerationParams,
    InputError,
    collate_token_ids,
    decode_image,
    generate,
    image_to_pixel_values,
    load_combiner,
    text_from_bytes,
    tokenize_text,
)

from ..readers import ReaderOptions, Shard, read_shard
from . import faults
from .commit import stage_results

log = logging.getLogger(__name__)
Task = Literal["caption", "summarize"]


def params_hash(params: GenerationParams) -> str:
    """sha256 of the generation parameters' canonical JSON (output lineage)."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def decode_batch(batch: dict[str, np.ndarray], *, task: Task) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: image bytes -> RGB pixels (+height, width); text bytes -> checked UTF-8.

    A row that fails gets error_stage/cause/message from combiner_core's InputError.
    """
    stages, causes, messages = _error_columns(batch)
    payloads = list(batch["payload"])
    n = len(payloads)
    heights, widths = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, data in enumerate(payloads):
        if stages[i]:
            payloads[i] = b""
            continue
        try:
            if task == "caption":
                image = np.asarray(decode_image(data))
                heights[i], widths[i] = image.shape[0], image.shape[1]
                payloads[i] = image.tobytes()
            else:
                text_from_bytes(data)
        except InputError as exc:
            stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
            payloads[i] = b""
    out = dict(batch)
    out.update(
        payload=np.array(payloads + [None], dtype=object)[:-1],
        height=heights,
        width=widths,
        error_stage=np.array(stages, dtype=object),
        error_cause=np.array(causes, dtype=object),
        error_message=np.array(messages, dtype=object),
    )
    return out


class GenerateWorker:
    """Ray Data actor: loads the combiner once, then generates for each batch.

    Output columns added to each row: text, score, candidates (JSON list of
    {text, score, num_tokens}), input_tokens, output_tokens, truncated, model_sha256.
    """

    def __init__(
        self,
        *,
        task: Task,
        model_uri: str,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        params: dict[str, Any],
        truncation: bool = True,
        num_gpus: float = 0,
    ) -> None:
        import torch

        self.task = task
        self.params = GenerationParams.model_validate(params)
        self.truncation = truncation
        device = "cpu"
        if num_gpus > 0:
            if torch.cuda.is_available():
                device = "cuda"
            else:
                log.warning("resources.num_gpus=%s but this worker sees no CUDA device; running on CPU", num_gpus)
        self.combiner = load_combiner(
            model_uri, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device=device
        )
        want = "image" if task == "caption" else "text"
        if self.combiner.modality != want:
            raise ValueError(
                f"model.uri {model_uri} is a {self.combiner.modality} combiner "
                f"({self.combiner.layout}), but {task} needs a {want} combiner; point model.uri at one"
            )
        self.model_sha256 = self.combiner.weights_sha256 or ""
        self.batches = 0

    def _inputs(self, batch: dict[str, np.ndarray], rows: list[int], errors: tuple[list, list, list]):
        """Model inputs for the good rows; rows that fail here get an error."""
        stages, causes, messages = errors
        if self.task == "caption":
            from PIL import Image

            images = []
            for i in rows:
                h, w = int(batch["height"][i]), int(batch["width"][i])
                pixels = np.frombuffer(batch["payload"][i], dtype=np.uint8).reshape(h, w, 3)
                images.append(Image.fromarray(pixels, mode="RGB"))
            pixel_values = image_to_pixel_values(self.combiner.image_processor, images)
            return rows, {"pixel_values": pixel_values}, [None] * len(rows)
        good, ids, tokenized = [], [], []
        for i in rows:
            try:
                tok = tokenize_text(
                    self.combiner.tokenizer,
                    bytes(batch["payload"][i]),
                    max_tokens=self.combiner.max_input_tokens,
                    truncation=self.truncation,
                )
            except InputError as exc:
                stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
                continue
            good.append(i)
            ids.append(tok.input_ids)
            tokenized.append(tok)
        if not good:
            return [], None, []
        pad = self.combiner.tokenizer.pad_token_id
        if pad is None:
            pad = self.combiner.special_token_ids()["pad_token_id"]
        return good, collate_token_ids(ids, pad_token_id=pad), tokenized

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        faults.maybe_kill("worker_batch", self.batches)
        n = len(batch["id"])
        errors = _error_columns(batch)
        todo = [i for i in range(n) if not errors[0][i]]
        text: list[str] = [""] * n
        candidates: list[str] = [""] * n
        score = np.full(n, np.nan)
        in_tokens = np.full(n, -1, dtype=np.int64)
        out_tokens = np.full(n, -1, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        if todo:
            rows, inputs, tokenized = self._inputs(batch, todo, errors)
            if rows:
                results = generate(self.combiner, inputs, self.params)
                for i, cands, tok in zip(rows, results, tokenized, strict=True):
                    best = cands[0]
                    text[i], score[i], out_tokens[i] = best.text, best.score, best.num_tokens
                    candidates[i] = json.dumps(
                        [{"text": c.text, "score": c.score, "num_tokens": c.num_tokens} for c in cands]
                    )
                    if tok is not None:
                        in_tokens[i], truncated[i] = tok.original_num_tokens, tok.truncated
        out = {k: v for k, v in batch.items() if k not in ("payload", "height", "width")}
        stages, causes, messages = errors
        out.update(
            text=np.array(text + [None], dtype=object)[:-1],
            candidates=np.array(candidates + [None], dtype=object)[:-1],
            score=score,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            truncated=truncated,
            model_sha256=np.array([self.model_sha256] * n, dtype=object),
            error_stage=np.array(stages, dtype=object),
            error_cause=np.array(causes, dtype=object),
            error_message=np.array(messages, dtype=object),
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
