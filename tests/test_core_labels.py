"""Label scoring against transformers' own per-token log-probs, on tiny models (no Ray)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import tests.tiny as tiny
from combiner_core import Combiner, LabelScorer, LabelSet, score_labels
from tests.test_core_generation import _batch, _build

WORDS = [w for w in tiny.WORDS if w not in ("a", "the")]


def _hf_logprob(c: Combiner, row: dict[str, torch.Tensor], sequence: list[int]) -> float:
    """log P(sequence | input) from transformers run on this one sequence: its logits for
    the labels (shifted right from decoder_start_token_id by the model), summed per token."""
    labels = torch.tensor([sequence])
    # Every decoder position attended, as in generation (transformers' default mask is
    # `!= pad`, which hides the start token of decoders whose pad is their start: GPT-2).
    with torch.inference_mode():
        logits = c.model(**row, labels=labels, decoder_attention_mask=torch.ones_like(labels)).logits
    logp = torch.log_softmax(logits.double(), dim=-1)[0]
    return float(logp.gather(-1, labels[0][:, None]).sum())


def _rows(c: Combiner, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    if "pixel_values" in batch:
        pixels = batch["pixel_values"].to(c.model.dtype)
        return [{"pixel_values": pixels[i : i + 1]} for i in range(pixels.shape[0])]
    out = []
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        ids = batch["input_ids"][i][keep][None]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


LABEL_SETS = {
    "one": ["cat"],
    "two": ["red circle", "red circle on the left"],  # a prefix of the other, different lengths
    "two_hundred": [" ".join(p) for p in itertools.islice(itertools.product(WORDS, WORDS), 200)],
}


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "vit2gpt2", "vit2trocr"])
@pytest.mark.parametrize("labels", sorted(LABEL_SETS))
def test_scores_equal_transformers_log_probs(name: str, labels: str) -> None:
    # float64: the tiny models' large weights (tests/tiny.py) make float32 rounding of
    # padded vs unpadded batches visible at 1e-5; in float64 any gap is a logic error.
    c = _build(name)
    c.model.double()
    label_set = LabelSet.from_spec(LABEL_SETS[labels])
    batch = _batch(c)
    scores = score_labels(c, batch, label_set)
    scorer = LabelScorer(c, label_set)
    rows = _rows(c, batch)
    assert len(scores) == len(rows)
    # transformers scores a sample of sequences (every one for the small sets)
    check = range(len(scorer.sequences)) if len(scorer.sequences) < 10 else range(0, len(scorer.sequences), 23)
    for row, got in zip(rows, scores, strict=True):
        for s in check:
            expected = _hf_logprob(c, row, scorer.sequences[s])
            assert got.verbalization_logprobs[scorer.owner[s]][0] == pytest.approx(expected, abs=1e-5)
        assert sum(got.probs) == pytest.approx(1.0) and sum(got.normalized_probs) == pytest.approx(1.0)
        assert all(0 <= p <= 1 for p in got.independent)


def test_several_verbalizations_add_up_and_length_normalization() -> None:
    c = _build("bert2bert")
    spec = {"round": ["circle", "red circle"], "square": "square"}
    label_set = LabelSet.from_spec(spec)
    [scores] = score_labels(c, {k: v[:1] for k, v in _batch(c).items()}, label_set)
    circle, red_circle = scores.verbalization_logprobs[0]
    assert scores.logprobs[0] == pytest.approx(math.log(math.exp(circle) + math.exp(red_circle)), abs=1e-9)
    assert scores.independent[0] == pytest.approx(math.exp(circle) + math.exp(red_circle), rel=1e-9)
    # length-normalized: per-token log-probs (2 tokens for "circle"+eos, 3 for "red circle"+eos)
    assert scores.normalized[0] == pytest.approx(math.log(math.exp(circle / 2) + math.exp(red_circle / 3)), abs=1e-9)
    assert scores.tokens[1] == 2


def test_bad_label_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        LabelSet.from_spec([])
    with pytest.raises(ValueError, match="repeat"):
        LabelSet.from_spec(["cat", "cat"])
    with pytest.raises(ValueError, match="non-empty"):
        LabelSet.from_spec({"cat": ["cat", " "]})
