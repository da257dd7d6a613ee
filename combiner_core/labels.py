"""Label scoring: how likely the combiner finds each of a fixed set of label verbalizations.

Teacher forcing, no free generation: for an input x and a verbalization v (its
decoder tokens, then eos), log P(v | x) = sum of the log-probabilities of v's tokens,
each given the input and the tokens before it. A label may have several
verbalizations; its probability is the sum of theirs. An answer outside the set is
impossible by construction.

Per input the scorer returns, for every label:
- `logprobs`: log of the label's total probability (log-sum-exp over verbalizations);
- `probs`: those normalized over the label set (they sum to 1);
- `normalized`: a length-normalized score, log-sum-exp over verbalizations of
  (log P(v | x) / tokens(v)), so long verbalizations are not penalized for length,
  and `normalized_probs` its softmax over the set;
- `independent`: exp(logprobs), the label's own probability, not normalized against
  the others (multi-label use: several labels can be likely at once).

How it runs (the fast path, engine/tree.py): inputs are sorted by length and encoded
in length buckets, once per input; each input's cross-attention keys/values are
computed once per layer and read by all of its verbalizations; the verbalizations form
a trie (decoder_start, then their tokens), and one decoder forward over the trie of
every input of a bucket computes each distinct prefix once (tree attention mask, each
node at its depth's position), using the generation engine's decoder description.
A node's logits score its children's tokens; a verbalization's log-probability is the
sum along its path. Decoder families without an engine fast path (and a model left in
training mode) run the reference instead: HF's decoder on every (input,
verbalization) pair as one batch; the fallback is logged once per family.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .combiner import Combiner
from .describe import max_new_tokens_limit
from .engine.encoder import SourceEncoder
from .engine.model import UnsupportedFamily, decoder_family, extract_decoder
from .engine.model.quantize import check_quantize, quantize_description, quantized_copy
from .engine.notices import warn_once
from .engine.tree import SequenceTrie, TreeScorer
from .errors import ParameterError
from .preprocess import collate_token_ids
from .training import IGNORE_INDEX, decoder_inputs_from_labels, pad_labels, target_token_ids

log = logging.getLogger(__name__)

# Longest verbalization in tokens (eos included): labels are names, not documents.
MAX_LABEL_TOKENS = 64

# Inputs per encoder batch on the fast path (text inputs are length-bucketed within).
ENCODER_BATCH = 64



@dataclass(frozen=True)
class LabelSet:
    """Label names and, per label, the texts the decoder is scored on."""

    names: tuple[str, ...]
    verbalizations: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        problems = []
        if not self.names:
            problems.append("the label set is empty; give at least one label")
        if len(set(self.names)) != len(self.names):
            problems.append(f"label names repeat: {sorted(n for n in self.names if self.names.count(n) > 1)}")
        if len(self.verbalizations) != len(self.names):
            problems.append("one tuple of verbalizations per label is needed")
        for name, texts in zip(self.names, self.verbalizations, strict=False):
            if not texts or any(not t.strip() for t in texts):
                problems.append(f"label {name!r}: every verbalization must be a non-empty text")
        if problems:
            raise ParameterError("; ".join(problems))

    @classmethod
    def from_spec(cls, labels: Sequence[str] | Mapping[str, str | Sequence[str]]) -> LabelSet:
        """From a list of names (each its own verbalization) or a mapping name -> text(s)."""
        if isinstance(labels, Mapping):
            names = tuple(str(k) for k in labels)
            verbal = tuple((v,) if isinstance(v, str) else tuple(str(x) for x in v) for v in labels.values())
            return cls(names=names, verbalizations=verbal)
        names = tuple(str(x) for x in labels)
        return cls(names=names, verbalizations=tuple((n,) for n in names))


@dataclass(frozen=True)
class LabelScores:
    """Scores of one input against a LabelSet (tuples in the set's label order)."""

    logprobs: tuple[float, ...]
    probs: tuple[float, ...]
    normalized: tuple[float, ...]
    normalized_probs: tuple[float, ...]
    independent: tuple[float, ...]
    tokens: tuple[int, ...]  # tokens (eos included) of each label's most likely verbalization
    verbalization_logprobs: tuple[tuple[float, ...], ...] = field(repr=False)


@dataclass
class ScorerStats:
    """Cumulative work counters (the benchmark's efficiency figures).

    Attributes:
        rows: inputs scored.
        encoder_runs: inputs encoded (one per input).
        decoder_positions: decoder token-positions computed: trie nodes per input on
            the fast path, verbalizations x longest per input on the reference path.
        sequence_tokens: decoder positions of every verbalization on its own (no
            padding, no sharing); sequence_tokens / decoder_positions is the sharing.
        encoder_batches: encoder forward calls.
    """

    rows: int = 0
    encoder_runs: int = 0
    decoder_positions: int = 0
    sequence_tokens: int = 0
    encoder_batches: int = 0


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softmax(values: Sequence[float]) -> tuple[float, ...]:
    norm = _logsumexp(values)
    return tuple(math.exp(v - norm) for v in values)


class LabelScorer:
    """Scores inputs of one combiner against one LabelSet.

    The verbalizations are tokenized once here (decoder tokenizer, no special tokens,
    then eos: exactly a fine-tuning target, see combiner_core.training).

    Attributes:
        fast_path: True when scoring runs the trie forward (engine/tree.py); False when
            the decoder family has none and the reference (HF's decoder) runs.
        fallback_reason: why fast_path is False, else None.
        trie: the verbalizations' SequenceTrie.
        stats: cumulative ScorerStats.
    """

    def __init__(self, combiner: Combiner, labels: LabelSet, *, quantize: str | None = None) -> None:
        self.combiner, self.labels = combiner, labels
        # int8 (engine/model/quantize.py): the trie's decoder description and the encoder
        # in int8; the reference path runs an int8 copy of the model. The model is unchanged.
        check_quantize(quantize, combiner.model.device, combiner.model.dtype)
        self.quantize = quantize
        self._int8_model: tuple[tuple, torch.nn.Module] | None = None
        ids = combiner.special_token_ids()
        self.start, self.pad, eos = ids["decoder_start_token_id"], ids["pad_token_id"], ids["eos_token_id"]
        self.sequences: list[list[int]] = []
        self.owner: list[int] = []  # sequence -> label index
        # A verbalization of n tokens (eos included) is read at decoder positions 0..n-1.
        positions = max_new_tokens_limit(combiner.model.config.to_dict())
        limit = MAX_LABEL_TOKENS if positions is None else min(MAX_LABEL_TOKENS, positions)
        for index, texts in enumerate(labels.verbalizations):
            for text in texts:
                seq, cut = target_token_ids(
                    combiner.decoder_tokenizer, text, eos_token_id=eos, max_tokens=limit
                )
                if cut:
                    raise ParameterError(f"label {labels.names[index]!r}: {text!r} is longer than "
                                     f"{limit} tokens (eos included), the most this decoder scores; "
                                     "use a shorter verbalization")
                self.sequences.append(seq)
                self.owner.append(index)
        self.stats = ScorerStats()
        self.trie = SequenceTrie.build(self.sequences, self.start)
        self._sequence_tokens = sum(len(s) for s in self.sequences)
        self.family = decoder_family(combiner.model)
        self.fallback_reason: str | None = None
        self._tree: TreeScorer | None = None
        self._tree_key: tuple | None = None
        try:
            self._tree_for(combiner.model)
        except (UnsupportedFamily, ValueError) as exc:
            self.fallback_reason = str(exc)
            warn_once(log, ("label fallback", self.family, self.fallback_reason),
                      "label scoring: decoder family '%s' runs the reference (HF decoder) instead of "
                      "the trie fast path: %s", self.family, self.fallback_reason)

    @property
    def fast_path(self) -> bool:
        return self.fallback_reason is None

    # --- public -----------------------------------------------------------------------

    @torch.inference_mode()
    def score_token_ids(self, inputs: Sequence[torch.Tensor]) -> list[LabelScores]:
        """Scores for unpadded encoder token ids (one 1-D tensor per input), in input order."""

        if not inputs:
            return []
        rows = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in inputs]
        if self._use_fast():
            return self._fast_text(rows)
        batch = collate_token_ids([r.tolist() for r in rows], pad_token_id=self.combiner.preprocessor.input_pad_token_id)
        return self._score(batch)

    @torch.inference_mode()
    def score_pixels(self, pixel_values: torch.Tensor) -> list[LabelScores]:
        """Scores for a batch of preprocessed images [n, channels, height, width]."""
        if int(pixel_values.shape[0]) == 0:
            return []
        if self._use_fast():
            return self._fast_pixels(pixel_values)
        return self._score({"pixel_values": pixel_values})

    # --- the fast path: trie forward over the engine's decoder ----------------------------

    def _use_fast(self) -> bool:
        # dropout in training mode: the HF modules are the reference for that
        return self.fast_path and not self.combiner.model.training

    def _tree_for(self, model: torch.nn.Module) -> TreeScorer:
        """The TreeScorer for the model's current weights (rebuilt when they change:
        other dtype or device, replaced or in-place modified parameters)."""
        key = (model.dtype, model.device, tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if self._tree is None or key != self._tree_key:
            desc = extract_decoder(model)
            if self.quantize == "int8":
                desc = quantize_description(desc)
            self._tree = TreeScorer(desc, self.trie, device=model.device, dtype=model.dtype)
            self._tree_key = key
            self._encoder = SourceEncoder(model, self.combiner.preprocessor.input_pad_token_id, self.quantize)
        return self._tree

    def _fast_text(self, rows: list[torch.Tensor]) -> list[LabelScores]:
        tree = self._tree_for(self.combiner.model)
        lengths = [len(r) for r in rows]
        if min(lengths) == 0:
            raise ValueError("an input has no tokens; tokenize with special tokens or drop it")
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])
        seq_logp: list[list[float] | None] = [None] * len(rows)
        for enc in self._encoder.text(rows, lengths, order, ENCODER_BATCH):
            bias = None
            if any(n != enc.width for n in enc.lengths):
                bias = torch.zeros(enc.states.shape[:2], dtype=enc.states.dtype, device=enc.states.device)
                bias.masked_fill_(enc.padding(), tree.min_value)
            self._fast_rows(tree, enc.states, bias, enc.inputs, seq_logp)
        return [self._label_scores(row) for row in seq_logp]

    def _fast_pixels(self, pixel_values: torch.Tensor) -> list[LabelScores]:
        tree = self._tree_for(self.combiner.model)
        n = int(pixel_values.shape[0])
        seq_logp: list[list[float] | None] = [None] * n
        for enc in self._encoder.pixels(pixel_values, list(range(n)), ENCODER_BATCH):
            self._fast_rows(tree, enc.states, None, enc.inputs, seq_logp)
        return [self._label_scores(row) for row in seq_logp]

    def _fast_rows(self, tree: TreeScorer, states: torch.Tensor, bias: torch.Tensor | None,
                   idx: list[int], seq_logp: list) -> None:
        values = tree.sequence_logprobs(states, bias).tolist()
        for i, row in zip(idx, values, strict=True):
            seq_logp[i] = row
        b = len(idx)
        self.stats.rows += b
        self.stats.encoder_runs += b
        self.stats.encoder_batches += 1
        self.stats.decoder_positions += b * tree.M
        self.stats.sequence_tokens += b * self._sequence_tokens

    # --- the reference: HF's decoder on every (input, verbalization) pair ------------------

    def _score(self, batch: dict[str, torch.Tensor]) -> list[LabelScores]:
        model = self.combiner.model
        if self.quantize == "int8":  # packed from the current weights (rebuilt when they change)
            key = tuple((p.data_ptr(), p._version) for p in model.parameters())
            if self._int8_model is None or self._int8_model[0] != key:
                self._int8_model = (key, quantized_copy(model))
            model = self._int8_model[1]
        device = model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        encoder = model.get_encoder()
        encoded = encoder(**batch).last_hidden_state  # once per input
        n, k = encoded.shape[0], len(self.sequences)
        labels = pad_labels(self.sequences).to(device)  # [k, T]
        dec_ids, dec_mask = decoder_inputs_from_labels(labels, decoder_start_token_id=self.start, pad_token_id=self.pad)
        # Every (input, verbalization) pair in one decoder batch; the encoder states are
        # expanded (a view), not recomputed.
        states = encoded[:, None].expand(n, k, *encoded.shape[1:]).reshape(n * k, *encoded.shape[1:])
        kwargs = {}
        if "attention_mask" in batch:
            mask = batch["attention_mask"]
            kwargs["attention_mask"] = mask[:, None].expand(n, k, mask.shape[1]).reshape(n * k, -1)
        out = model(
            encoder_outputs=(states,),
            decoder_input_ids=dec_ids.repeat(n, 1),
            decoder_attention_mask=dec_mask.repeat(n, 1),
            **kwargs,
        )
        # float64 for the sums: scores are compared across hundreds of labels.
        logp = F.log_softmax(out.logits.double(), dim=-1)
        targets = labels.repeat(n, 1)
        picked = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        picked = picked.masked_fill(targets == IGNORE_INDEX, 0.0)
        seq_logp = picked.sum(-1).view(n, k).tolist()
        self.stats.rows += n
        self.stats.encoder_runs += n
        self.stats.encoder_batches += 1
        self.stats.decoder_positions += n * int(labels.shape[0] * labels.shape[1])
        self.stats.sequence_tokens += n * self._sequence_tokens
        return [self._label_scores(row) for row in seq_logp]

    def _label_scores(self, seq_logp: Sequence[float]) -> LabelScores:
        per_label: list[list[float]] = [[] for _ in self.labels.names]
        per_label_norm: list[list[float]] = [[] for _ in self.labels.names]
        best: list[tuple[float, int]] = [(-math.inf, 0)] * len(self.labels.names)
        for value, owner, seq in zip(seq_logp, self.owner, self.sequences, strict=True):
            per_label[owner].append(value)
            per_label_norm[owner].append(value / len(seq))
            if value > best[owner][0]:
                best[owner] = (value, len(seq))
        logprobs = tuple(_logsumexp(v) for v in per_label)
        normalized = tuple(_logsumexp(v) for v in per_label_norm)
        return LabelScores(
            logprobs=logprobs,
            probs=_softmax(logprobs),
            normalized=normalized,
            normalized_probs=_softmax(normalized),
            independent=tuple(math.exp(v) for v in logprobs),
            tokens=tuple(b[1] for b in best),
            verbalization_logprobs=tuple(tuple(v) for v in per_label),
        )


def score_labels(
    combiner: Combiner, inputs: dict[str, torch.Tensor], labels: LabelSet, *, quantize: str | None = None
) -> list[LabelScores]:
    """Score a prepared batch (input_ids/attention_mask, or pixel_values) against `labels`
    (quantize: "int8" on CPU in float32, as LabelScorer)."""
    scorer = LabelScorer(combiner, labels, quantize=quantize)
    if "pixel_values" in inputs:
        return scorer.score_pixels(inputs["pixel_values"])
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    rows = [ids[i][mask[i].bool()] if mask is not None else ids[i] for i in range(ids.shape[0])]
    return scorer.score_token_ids(rows)
