"""Free generation tasks: caption (images -> text) and summarize (documents -> text).

Both run the combiner's generation engine on the actor and write the same columns:
text / score (the best candidate), texts / scores (all num_return_sequences
candidates, best first), input_tokens / truncated (text inputs; null for images) and
output_tokens. Rows with a reference are scored by exact match (pipelines.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from combiner_core import GenerationParams

from ...metrics import exact_match_count
from .base import Modality, TaskAdapter, preprocess_texts

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

    def setup(self, combiner: Combiner) -> Any:
        from combiner_core import GenerationEngine

        # dtype=None: the actor loaded the model in the spec's dtype already.
        return GenerationEngine(combiner, self.params, dtype=None)

    def run(self, runner: Any, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, list]:
        import torch

        keys = [str(batch["id"][i]) for i in rows]
        if self.modality == "image":
            pixels = torch.from_numpy(np.stack([batch["pixel_values"][i] for i in rows]))
            results = runner.generate_pixels(pixels, row_keys=keys)
            in_tokens: list[int | None] = [None] * len(rows)
            truncated: list[bool | None] = [None] * len(rows)
        else:
            ids = [torch.from_numpy(np.asarray(batch["input_ids"][i], dtype=np.int64)) for i in rows]
            results = runner.generate_token_ids(ids, row_keys=keys)
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

    def run_stats(self, runner: Any) -> dict[str, float]:
        s = runner.stats
        # Additive counters only (ratios are computed from the job's totals).
        return {
            "generated_tokens": float(s.generated_tokens),
            "decoder_positions": float(s.decoder_positions),
            "decoder_useful_positions": float(s.active_positions),
            "encoder_positions": float(s.encoder_positions),
            "encoder_useful_positions": float(s.encoder_tokens),
            "refills": float(s.refills),
        }

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


@dataclass(frozen=True)
class SummarizeTask(_GenerateTask):
    """summarize_corpus: one summary (or num_return_sequences) per document."""

    name: ClassVar[str] = "summarize"
    modality: ClassVar[Modality] = "text"
    truncation: bool = True

    def preprocess(self, batch: dict[str, np.ndarray], pre: Preprocessor) -> dict[str, np.ndarray]:
        return preprocess_texts(batch, pre, truncation=self.truncation)

