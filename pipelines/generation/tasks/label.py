"""label_dataset: each row gets one label of a fixed set, scored by the combiner (no free generation).

The model scores every label's verbalizations given the input (combiner_core.labels:
encoder once per input, teacher forcing); the label with the highest probability
(or length-normalized score, `decide_by`) wins, unless its probability is below
`abstain_below`, when the row's label is null and `abstained` is true. In multi-label
mode each label has its own probability (P(verbalization | input), not normalized
against the others) and every label at or above `multi_label_threshold` is kept.

Rows with a reference are scored: accuracy, a confusion matrix, and the expected
calibration error of label_prob (10 equal-width bins, as Guo et al. 2017 define it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from ..counters import ModelCounters
from .base import (
    Modality,
    TaskAdapter,
    cached_preprocessor,
    model_pixels,
    preprocess_images,
    preprocess_texts,
)

if TYPE_CHECKING:
    from combiner_core import Combiner, Preprocessor
    from combiner_core.describe import CheckpointInfo

DecideBy = Literal["probability", "length_normalized"]
_ECE_BINS = 10  # the usual choice for expected calibration error (Guo et al., 2017)
_CONFUSION = "confusion\t"  # metric-sum keys: confusion\t<reference>\t<predicted>

_FIELDS = [
    pa.field("label", pa.string()),
    pa.field("label_prob", pa.float64()),
    pa.field("label_probs", pa.map_(pa.string(), pa.float64())),
    pa.field("abstained", pa.bool_()),
    pa.field("labels", pa.list_(pa.string())),
    pa.field("input_tokens", pa.int64()),
    pa.field("label_tokens", pa.int64()),
]


@dataclass(frozen=True)
class LabelTask(TaskAdapter):
    """Options of a labeling job (see LabelJobSpec for each one's meaning)."""

    name: ClassVar[str] = "label"
    # Text or image: whatever the model reads (its preprocessor decides at run time).
    modality: ClassVar[Modality | None] = None
    display_columns: ClassVar[tuple[str, str]] = ("label", "label_prob")

    names: tuple[str, ...]
    verbalizations: tuple[tuple[str, ...], ...]
    template: str | None = None
    decide_by: DecideBy = "probability"
    abstain_below: float = 0.0
    multi_label: bool = False
    multi_label_threshold: float = 0.5
    max_pixels: int | None = None  # input.max_pixels

    def output_fields(self) -> list[pa.Field]:
        return list(_FIELDS)

    def params_digest_source(self) -> Any:
        return {
            "labels": dict(zip(self.names, self.verbalizations, strict=True)), "template": self.template,
            "decide_by": self.decide_by, "abstain_below": self.abstain_below, "multi_label": self.multi_label,
            "multi_label_threshold": self.multi_label_threshold,
        }

    def model_problems(self, model_uri: str, info: CheckpointInfo, *, trust_remote_code: bool = False) -> list[str]:
        """Verbalizations the decoder cannot score: more tokens (eos included) than its
        positions or the scorer's MAX_LABEL_TOKENS. The actor's LabelScorer would refuse
        them when it starts, failing the whole job; here they are a spec problem. Loads
        the tokenizer on the driver (transformers: a few seconds, label jobs only)."""
        from combiner_core.labels import MAX_LABEL_TOKENS

        limit = MAX_LABEL_TOKENS if info.max_new_tokens is None else min(MAX_LABEL_TOKENS, info.max_new_tokens)
        tokenizer = cached_preprocessor(model_uri, trust_remote_code).decoder_tokenizer
        unk = tokenizer.unk_token_id
        problems = []
        owner: dict[tuple[int, ...], tuple[str, str]] = {}  # token ids -> the first (label, text) with them
        for name, texts in zip(self.names, self.verbalizations, strict=True):
            for text in texts:
                ids = tuple(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
                if len(ids) + 1 > limit:
                    problems.append(f"labels.{name}: {text!r} is {len(ids) + 1} tokens with eos, more than the "
                                    f"{limit} this model's decoder scores; use a shorter verbalization")
                if unk is not None and ids and 2 * sum(t == unk for t in ids) >= len(ids):
                    problems.append(f"labels.{name}: most of {text!r} is words this model's tokenizer does not "
                                    f"know ({tokenizer.unk_token}); the model cannot read it. Use its words")
                first = owner.setdefault(ids, (name, text))
                if first[0] != name:
                    problems.append(f"labels.{name}: {text!r} is the same tokens as {first[1]!r} of label "
                                    f"{first[0]!r} for this model, so the two labels cannot be told apart")
        return problems

    def preprocess(self, batch: dict[str, np.ndarray], pre: Preprocessor) -> dict[str, np.ndarray]:
        if pre.modality == "image":
            return preprocess_images(batch, pre, max_pixels=self.max_pixels)
        return preprocess_texts(batch, pre, truncation=True, template=self.template)

    def setup(self, combiner: Combiner, *, quantize: str | None = None) -> Any:
        from combiner_core import LabelScorer, LabelSet

        return LabelScorer(combiner, LabelSet(names=self.names, verbalizations=self.verbalizations), quantize=quantize)

    def run(self, engine: Any, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, list]:
        import torch

        if engine.combiner.modality == "image":
            scores = engine.score_pixels(model_pixels(engine.combiner, batch, rows))
            in_tokens: list[int | None] = [None] * len(rows)
        else:
            ids = [torch.from_numpy(np.asarray(batch["input_ids"][i], dtype=np.int64)) for i in rows]
            scores = engine.score_token_ids(ids)
            in_tokens = [int(batch["input_tokens"][i]) for i in rows]
        out: dict[str, list] = {f.name: [] for f in _FIELDS}
        for s, tokens in zip(scores, in_tokens, strict=True):
            if self.multi_label:
                probs = list(s.independent)
            else:
                probs = list(s.normalized_probs if self.decide_by == "length_normalized" else s.probs)
            best = int(np.argmax(probs))
            abstained = probs[best] < self.abstain_below
            kept = [n for n, p in zip(self.names, probs, strict=True) if p >= self.multi_label_threshold]
            out["label"].append(None if abstained else self.names[best])
            out["label_prob"].append(float(probs[best]))
            out["label_probs"].append(list(zip(self.names, map(float, probs), strict=True)))
            out["abstained"].append(bool(abstained))
            out["labels"].append(kept if self.multi_label else ([] if abstained else [self.names[best]]))
            out["input_tokens"].append(tokens)
            out["label_tokens"].append(int(s.tokens[best]))
        return out

    def counters(self, engine: Any) -> ModelCounters:
        return ModelCounters.of_scorer(engine.stats)

    def metric_sums(self, table: pa.Table) -> dict[str, float]:
        refs = table.column("reference").to_pylist()
        sums: dict[str, float] = {"reference_rows": 0.0, "correct": 0.0, "abstained": 0.0}
        for ref, label, prob, abstained in zip(
            refs, *(table.column(c).to_pylist() for c in ("label", "label_prob", "abstained")), strict=True
        ):
            if ref is None:
                continue
            sums["reference_rows"] += 1
            hit = label is not None and label == ref
            sums["correct"] += hit
            sums["abstained"] += bool(abstained)
            key = f"{_CONFUSION}{ref}\t{label if label is not None else '(abstained)'}"
            sums[key] = sums.get(key, 0.0) + 1
            b = min(int(prob * _ECE_BINS), _ECE_BINS - 1)
            for part, value in (("n", 1.0), ("conf", prob), ("acc", float(hit))):
                sums[f"ece{b}_{part}"] = sums.get(f"ece{b}_{part}", 0.0) + value
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, Any]:
        n = sums.get("reference_rows", 0.0)
        if not n:
            return {}
        confusion: dict[str, dict[str, int]] = {}
        for key, count in sums.items():
            if key.startswith(_CONFUSION):
                ref, pred = key[len(_CONFUSION):].split("\t")
                confusion.setdefault(ref, {})[pred] = int(count)
        ece = sum(
            abs(sums.get(f"ece{b}_conf", 0.0) - sums.get(f"ece{b}_acc", 0.0))
            for b in range(_ECE_BINS)
        ) / n
        return {
            "reference_rows": n,
            "accuracy": round(sums.get("correct", 0.0) / n, 4),
            "abstained_rate": round(sums.get("abstained", 0.0) / n, 4),
            "expected_calibration_error": round(ece, 4),
            "confusion_matrix": confusion,
        }
