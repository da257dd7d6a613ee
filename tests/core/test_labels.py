"""Label scoring against transformers' own per-token log-probs, on tiny models (no Ray).

The fast path (a trie of the verbalizations, one decoder forward per batch over the
engine's decoder, combiner_core/engine/tree.py) for every decoder family with a fast
path, text and image encoders, batched and one input per call; the reference path
(HF's decoder) for a family without one and for a model in training mode.
"""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch

import tests.support.tiny as tiny
from combiner_core import Combiner, LabelScorer, LabelSet, random_combiner, score_labels
from combiner_core.engine import notices
from combiner_core.engine.model import extract_decoder
from combiner_core.engine.tree import SequenceTrie
from tests.support.combos import batch as _batch
from tests.support.combos import build as _build
from tests.support.families import T5_KINDS
from tests.support.families import build as build_engine_model

WORDS = [w for w in tiny.WORDS if w not in ("a", "the")]


def _hf_logprob(c: Combiner, row: dict[str, torch.Tensor], sequence: list[int]) -> float:
    """log P(sequence | input) from transformers run on this one sequence: its logits for
    the labels fed shifted right from decoder_start_token_id (as generation starts;
    given explicitly because mBART's own label shift starts from the last label token),
    summed per token."""
    labels = torch.tensor([sequence])
    start = c.special_token_ids()["decoder_start_token_id"]
    decoder_input_ids = torch.tensor([[start, *sequence[:-1]]])
    # Every decoder position attended, as in generation (transformers' default mask is
    # `!= pad`, which hides the start token of decoders whose pad is their start: GPT-2).
    with torch.inference_mode():
        logits = c.model(
            **row, decoder_input_ids=decoder_input_ids, decoder_attention_mask=torch.ones_like(labels)
        ).logits
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
    # 1 to 5 words, shared prefixes at several depths, a label with two verbalizations
    "mixed": {
        "red": "red", "red_circle": "red circle", "red_circle_left": ["red circle on the left", "red circle left"],
        "blue": "blue square", "blue_top": "blue square top", "cat": "cat", "dog": "dog sat on the mat",
    },
}


def _trocr_sinusoidal() -> Combiner:
    """TrOCR with fairseq sinusoidal positions (pad-aware numbering, as RoBERTa's)."""
    bt = tiny.bert_tokenizer()
    config = tiny.trocr_config(bt)
    config.use_learned_position_embeddings = False
    config.scale_embedding = True
    return random_combiner(
        encoder_config=tiny.vit_config(), decoder_config=config, decoder_tokenizer=bt,
        image_processor=tiny.vit_image_processor(),
    )


def _model(name: str) -> Combiner:
    if name in ("bert2roberta", "bart", "mbart", "marian", "pegasus", *T5_KINDS):
        return build_engine_model(name)
    if name == "vit2trocr_sinusoidal":
        return _trocr_sinusoidal()
    return _build(name)


# family -> combiner: every decoder family with a fast path, text and image encoders
FAST = ["bert2bert", "bert2roberta", "bert2gpt2", "vit2gpt2", "vit2trocr", "vit2trocr_sinusoidal", "bart", "mbart", "marian",
        *T5_KINDS]


def _check_against_hf(c: Combiner, label_set: LabelSet, batch, scores, scorer: LabelScorer) -> None:
    rows = _rows(c, batch)
    assert len(scores) == len(rows)
    # transformers scores a sample of sequences (every one for the small sets)
    seqs = scorer.sequences
    check = range(len(seqs)) if len(seqs) < 10 else range(0, len(seqs), 23)
    for row, got in zip(rows, scores, strict=True):
        for s in check:
            expected = _hf_logprob(c, row, seqs[s])
            owner = scorer.owner[s]
            which = [t for t, o in enumerate(scorer.owner) if o == owner].index(s)
            assert got.verbalization_logprobs[owner][which] == pytest.approx(expected, abs=1e-5)
        assert sum(got.probs) == pytest.approx(1.0) and sum(got.normalized_probs) == pytest.approx(1.0)
        assert all(0 <= p <= 1 for p in got.independent)


def _one_by_one(scorer: LabelScorer, c: Combiner, batch) -> list:
    if "pixel_values" in batch:
        return [scorer.score_pixels(batch["pixel_values"][i : i + 1])[0] for i in range(batch["pixel_values"].shape[0])]
    return [scorer.score_token_ids([row["input_ids"][0]])[0] for row in _rows(c, batch)]


def _assert_same_scores(a, b, tol: float = 1e-9, rel: float = 0.0) -> None:
    """Equal verbalization log-probs, within `tol` or `rel` times their size (a sum over
    tokens: its rounding grows with it)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for vx, vy in zip(x.verbalization_logprobs, y.verbalization_logprobs, strict=True):
            assert vx == pytest.approx(vy, abs=tol, rel=rel)
        assert x.tokens == y.tokens


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("labels", sorted(LABEL_SETS))
def test_scores_equal_transformers_log_probs(name: str, labels: str) -> None:
    # float64: the tiny models' large weights (tests/support/tiny.py) make float32 rounding of
    # padded vs unpadded batches visible at 1e-5; in float64 any gap is a logic error.
    c = _model(name)
    c.model.double()
    label_set = LabelSet.from_spec(LABEL_SETS[labels])
    batch = _batch(c)
    scores = score_labels(c, batch, label_set)
    scorer = LabelScorer(c, label_set)
    assert scorer.fast_path, scorer.fallback_reason
    _check_against_hf(c, label_set, batch, scores, scorer)
    # one input per call gives the same scores as the padded batch
    _assert_same_scores(_one_by_one(scorer, c, batch), scores, tol=1e-5)
    # each trie node computed once per input: fewer positions than K passes of the longest
    k, longest = len(scorer.sequences), max(len(s) for s in scorer.sequences)
    n = len(scores)
    assert scorer.stats.rows == n and scorer.stats.encoder_runs == n
    assert scorer.stats.decoder_positions == n * scorer.trie.nodes
    assert scorer.stats.sequence_tokens == n * sum(len(s) for s in scorer.sequences)
    if k > 1:
        assert scorer.stats.decoder_positions < n * k * longest
        assert scorer.stats.decoder_positions < scorer.stats.sequence_tokens


@pytest.mark.parametrize("labels", ["two", "mixed", "two_hundred"])
def test_family_without_fast_path_runs_the_reference_and_logs_once(labels: str, caplog) -> None:
    c = _model("pegasus")
    c.model.double()
    label_set = LabelSet.from_spec(LABEL_SETS[labels])
    notices.forget()
    with caplog.at_level(logging.WARNING, logger="combiner_core.labels"):
        scorer = LabelScorer(c, label_set)
        LabelScorer(c, label_set)
    assert not scorer.fast_path and "pegasus" in scorer.fallback_reason
    messages = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(messages) == 1 and "'pegasus'" in messages[0]
    batch = _batch(c)
    scores = scorer.score_token_ids([row["input_ids"][0] for row in _rows(c, batch)])
    _check_against_hf(c, label_set, batch, scores, scorer)
    k, longest = len(scorer.sequences), max(len(s) for s in scorer.sequences)
    assert scorer.stats.decoder_positions == len(scores) * k * longest  # no sharing


@pytest.mark.parametrize("name", ["bert2roberta", "vit2gpt2", "bart", "t5v11", "umt5"])
def test_fast_path_equals_reference_path(name: str) -> None:
    """The same scorer on the trie and, with the model in training mode (dropout 0 in
    these configs), on HF's decoder: equal scores."""
    c = _model(name)
    c.model.double()
    label_set = LabelSet.from_spec(LABEL_SETS["mixed"])
    batch = _batch(c)
    fast = score_labels(c, batch, label_set)
    c.model.train()
    try:
        scorer = LabelScorer(c, label_set)
        reference = score_labels(c, batch, label_set)
        assert scorer.fast_path  # training mode picks the reference per call, not for good
    finally:
        c.model.eval()
    _assert_same_scores(fast, reference, tol=1e-9)


def test_float32_scores_and_weights_changed_after_the_scorer_was_built() -> None:
    c = _model("bert2gpt2")
    label_set = LabelSet.from_spec(LABEL_SETS["mixed"])
    scorer = LabelScorer(c, label_set)
    batch = _batch(c)
    rows = [row["input_ids"][0] for row in _rows(c, batch)]
    f32 = scorer.score_token_ids(rows)
    c.model.double()  # new parameter tensors: the scorer reads the new weights
    f64 = scorer.score_token_ids(rows)
    # float32 against float64: sums of log-probs reach -75 on the tiny init_std=1 models,
    # whose large weights amplify float32 rounding, and the CPU's kernels differ (the same
    # sum was 1.6e-3 off on an Intel Xeon, within 1e-3 on an AMD EPYC): relative 1e-4 is
    # 7.5e-3 at -75. That the float64 scores come from the new weights is checked against
    # HF in float64 just below (within 1e-5).
    _assert_same_scores(f32, f64, tol=1e-4, rel=1e-4)
    _check_against_hf(c, label_set, batch, f64, scorer)
    with torch.no_grad():  # an in-place change too
        c.model.decoder.lm_head.weight.mul_(0.5)
    _check_against_hf(c, label_set, batch, scorer.score_token_ids(rows), scorer)


def test_trie_shares_prefixes() -> None:
    start, eos = 100, 101
    seqs = [[1, 2, eos], [1, 2, 3, eos], [1, eos], [4, eos], [1, 2, eos]]
    trie = SequenceTrie.build(seqs, start)
    # nodes: start, (1), (1,2), (1,2,3), (4)
    assert trie.tokens.tolist() == [start, 1, 2, 3, 4]
    assert trie.depth.tolist() == [0, 1, 2, 3, 1]
    assert trie.parent == (-1, 0, 1, 2, 0)
    # edges: (start,1) (1,2) (2,eos) (2,3) (3,eos) (1,eos) (start,4) (4,eos)
    assert list(zip(trie.edge_node.tolist(), trie.edge_token.tolist(), strict=True)) == [
        (0, 1), (1, 2), (2, eos), (2, 3), (3, eos), (1, eos), (0, 4), (4, eos)
    ]
    assert trie.paths == ((0, 1, 2), (0, 1, 3, 4), (0, 5), (6, 7), (0, 1, 2))
    anc = trie.ancestors()
    assert anc[3].tolist() == [True, True, True, True, False] and anc[4].tolist() == [True, False, False, False, True]
    assert trie.incidence().sum(0).tolist() == [3, 4, 2, 2, 3]
    # RoBERTa-style numbering counts non-pad tokens (pad sits at padding_idx)
    spec = extract_decoder(_model("bert2roberta").model)
    pad = spec.pos_padding_idx
    assert trie.positions(spec).tolist() == [pad + 1, pad + 2, pad + 3, pad + 4, pad + 2]
    padded = SequenceTrie.build([[pad, 5, eos]], pad)
    assert padded.positions(spec).tolist() == [pad, pad, pad + 1]


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
