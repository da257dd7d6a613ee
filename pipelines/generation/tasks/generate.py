"""Free generation tasks: caption (images -> text) and summarize (documents -> text).

Both run the combiner's generation engine on the actor and write the same columns:
text / score (the best candidate), texts / scores (all num_return_sequences
candidates, best first), input_tokens / truncated (text inputs; null for images) and
output_tokens. Rows with a reference are scored by exact match (pipelines.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from combiner_core import GenerationParams

from ...metrics import ROUGE_KEYS, exact_match_count, rouge_f1
from ..counters import ModelCounters
from .base import Modality, TaskAdapter, error_columns, model_pixels, object_array, preprocess_texts

if TYPE_CHECKING:
    from combiner_core import Combiner, Preprocessor

_FIELDS = [
    pa.field("text", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("texts", pa.list_(pa.string())),
    pa.field("scores", pa.list_(pa.float64())),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("truncated", pa.bool_()),
]


@dataclass(frozen=True)
class _GenerateTask(TaskAdapter):
    """Shared by caption and summarize: generate with `params`, best candidate first."""

    params: GenerationParams

    def output_fields(self) -> list[pa.Field]:
        return list(_FIELDS)

    def params_digest_source(self) -> Any:
        return self.params

    def setup(self, combiner: Combiner, *, quantize: str | None = None) -> Any:
        from combiner_core import GenerationEngine

        # dtype=None: the actor loaded the model in the spec's dtype already.
        return GenerationEngine(combiner, self.params, dtype=None, quantize=quantize)

    def run(self, engine: Any, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, list]:
        import torch

        keys = [str(batch["id"][i]) for i in rows]
        if self.modality == "image":
            results = engine.generate_pixels(model_pixels(engine.combiner, batch, rows), row_keys=keys)
            in_tokens: list[int | None] = [None] * len(rows)
            truncated: list[bool | None] = [None] * len(rows)
        else:
            ids = [torch.from_numpy(np.asarray(batch["input_ids"][i], dtype=np.int64)) for i in rows]
            results = engine.generate_token_ids(ids, row_keys=keys)
            in_tokens = [int(batch["input_tokens"][i]) for i in rows]
            truncated = [bool(batch["truncated"][i]) for i in rows]
        return {
            "text": [c[0].text for c in results],
            "score": [float(c[0].score) for c in results],
            "texts": [[x.text for x in c] for c in results],
            "scores": [[float(x.score) for x in c] for c in results],
            "input_tokens": in_tokens,
            "output_tokens": [c[0].num_tokens for c in results],
            "truncated": truncated,
        }

    def counters(self, engine: Any) -> ModelCounters:
        return ModelCounters.of_engine(engine.stats)

    def metric_sums(self, table: pa.Table) -> dict[str, float]:
        refs = table.column("reference").to_pylist()
        texts = table.column("text").to_pylist()
        pairs = [(t, r) for t, r in zip(texts, refs, strict=True) if r is not None]
        return {"reference_rows": float(len(pairs)), "exact_matches": float(exact_match_count(pairs))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums.get("reference_rows", 0.0)
        if not n:
            return {}
        return {"reference_rows": n, "exact_match": round(sums.get("exact_matches", 0.0) / n, 4)}


@dataclass(frozen=True)
class CaptionTask(_GenerateTask):
    """caption_dataset: one caption (or num_return_sequences) per image."""

    name: ClassVar[str] = "caption"
    modality: ClassVar[Modality] = "image"
    max_pixels: int | None = None  # input.max_pixels


LongDocuments = Literal["chunk", "truncate", "reject"]


@dataclass(frozen=True)
class SummarizeTask(_GenerateTask):
    """summarize_corpus: one summary (or num_return_sequences) per document.

    Documents longer than the encoder's limit are chunked (windows at sentence
    boundaries, summaries of the window summaries: combiner_core.chunking), truncated
    (reported per row), or rejected to _errors (cause too_long). Rows with a reference
    are scored by ROUGE-1/2/L/Lsum as well as exact match.
    """

    name: ClassVar[str] = "summarize"
    modality: ClassVar[Modality] = "text"
    long_documents: LongDocuments = "chunk"

    def output_fields(self) -> list[pa.Field]:
        return [*_FIELDS, pa.field("chunks", pa.int64())]

    def preprocess(self, batch: dict[str, np.ndarray], pre: Preprocessor) -> dict[str, np.ndarray]:
        if self.long_documents != "chunk":
            out = preprocess_texts(batch, pre, truncation=self.long_documents == "truncate")
            out["window_lengths"] = object_array([np.asarray([len(ids)], dtype=np.int64) for ids in out["input_ids"]])
            return out
        return _preprocess_windows(batch, pre)

    def run(self, engine: Any, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, list]:
        import torch

        from combiner_core import summarize_windows

        windows = []
        for i in rows:
            flat = np.asarray(batch["input_ids"][i], dtype=np.int64)
            bounds = np.cumsum(np.asarray(batch["window_lengths"][i], dtype=np.int64))[:-1]
            windows.append([w.tolist() for w in np.split(flat, bounds)])
        combiner = engine.combiner

        def generate(ids: list[list[int]], keys: list[str]) -> list:
            return engine.generate_token_ids([torch.tensor(x, dtype=torch.long) for x in ids], row_keys=keys)

        summaries = summarize_windows(
            generate, combiner.tokenizer, windows, [str(batch["id"][i]) for i in rows],
            max_tokens=combiner.max_input_tokens or max(len(w) for ws in windows for w in ws),
        )
        results = [s.candidates for s in summaries]
        return {
            "text": [c[0].text for c in results],
            "score": [float(c[0].score) for c in results],
            "texts": [[x.text for x in c] for c in results],
            "scores": [[float(x.score) for x in c] for c in results],
            "input_tokens": [int(batch["input_tokens"][i]) for i in rows],
            "output_tokens": [c[0].num_tokens for c in results],
            "truncated": [bool(batch["truncated"][i]) for i in rows],
            "chunks": [s.windows for s in summaries],
        }

    def metric_sums(self, table: pa.Table) -> dict[str, float]:
        sums = super().metric_sums(table)
        refs = table.column("reference").to_pylist()
        for text, ref in zip(table.column("text").to_pylist(), refs, strict=True):
            if ref is None:
                continue
            for key, value in rouge_f1(text or "", ref).items():
                sums[key] = sums.get(key, 0.0) + value
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().metrics(sums)
        n = sums.get("reference_rows", 0.0)
        if n:
            out.update({key: round(sums.get(key, 0.0) / n, 4) for key in ROUGE_KEYS})
        return out


def _preprocess_windows(batch: dict[str, np.ndarray], pre: Preprocessor) -> dict[str, np.ndarray]:
    """Text bytes -> UTF-8 check -> windows of whole sentences that fit the encoder.

    `input_ids` holds a row's windows back to back, `window_lengths` their lengths;
    `input_tokens` is the whole document's length; nothing is truncated.
    """
    from combiner_core import InputError, split_windows, text_from_bytes, tokenize_text

    stages, causes, messages = error_columns(batch)
    n = len(batch["payload"])
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    lengths: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    in_tokens = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        if stages[i]:
            continue
        try:
            text = text_from_bytes(bytes(batch["payload"][i]))
            whole = tokenize_text(pre.tokenizer, text, max_tokens=None, truncation=False)  # empty -> InputError
        except InputError as exc:
            stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
            continue
        limit = pre.max_input_tokens or whole.num_tokens
        windows = split_windows(pre.tokenizer, text, max_tokens=limit)
        ids[i] = np.asarray([t for w in windows for t in w], dtype=np.int64)
        lengths[i] = np.asarray([len(w) for w in windows], dtype=np.int64)
        in_tokens[i] = whole.num_tokens
    out = {k: v for k, v in batch.items() if k != "payload"}
    out.update(
        input_ids=object_array(ids), window_lengths=object_array(lengths), input_tokens=in_tokens,
        truncated=np.zeros(n, dtype=bool),
        error_stage=object_array(stages), error_cause=object_array(causes), error_message=object_array(messages),
    )
    return out
