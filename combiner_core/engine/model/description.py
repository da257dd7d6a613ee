"""The decoder description: one uniform record of a cross-attending decoder's weights
and switches (pre- vs post-LN, positional kind and offset, embedding scale / layernorm,
BERT's LM-head transform, final_logits_bias), filled per family (bert.py, gpt2.py,
bart.py, trocr.py) and run by one generic step (runner.py).

The weights are the model's own tensors (views, not copies) except the fused
self-attention q|k|v projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class UnsupportedFamily(Exception):
    """The decoder has no fast path; the message says which family and why."""


@dataclass
class Linear:
    """y = x @ weight.T + bias, weight shaped [out, in] (a transposed view for GPT-2's Conv1D)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass
class Norm:
    """A LayerNorm's parameters."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclass
class LayerWeights:
    """One decoder layer: self-attention, cross-attention, feed-forward.

    `qkv` is the fused self-attention projection (rows: q, then k, then v);
    `scale` multiplies the queries (1/sqrt(head_dim), and GPT-2's optional
    1/(layer+1)). The three norms sit before their block (pre_ln) or after the
    residual add (post_ln) as DecoderDescription.pre_ln says.
    """

    qkv: Linear
    self_out: Linear
    self_norm: Norm
    cross_q: Linear
    cross_k: Linear
    cross_v: Linear
    cross_out: Linear
    cross_norm: Norm
    fc1: Linear
    fc2: Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    ffn_norm: Norm
    scale: float


@dataclass
class DecoderDescription:
    """Everything the generic step needs to run one decoder family.

    Attributes:
        family: the decoder's model_type (bert, roberta, gpt2, trocr, bart, mbart, marian...).
        hidden, heads, head_dim: the decoder's width.
        pre_ln: True for GPT-2 / mBART (norm before each block), False for BERT / BART.
        word_emb: [vocab, hidden] input embedding; multiplied by emb_scale.
        pos_emb: [positions, hidden] absolute positional table, indexed by
            position + pos_offset (BART's learned table has offset 2).
        pos_padding_idx: RoBERTa / TrOCR-sinusoidal style positions: a token equal to
            this id gets position padding_idx, others padding_idx + 1 + position.
        type_emb: a [hidden] vector added to every input (BERT token type 0).
        emb_norm: the embedding LayerNorm (BERT, BART, TrOCR) or None.
        layers: per-layer weights.
        final_norm: GPT-2's ln_f, mBART's layer_norm, or None.
        head_dense, head_act, head_norm: BERT/RoBERTa prediction-head transform.
        lm_head: [vocab, hidden] output projection (with BERT's bias).
        logits_bias: BART / Marian final_logits_bias, added after the projection.
        cross_dim: width of the states cross-attention reads (after enc_to_dec_proj).
    """

    family: str
    hidden: int
    heads: int
    head_dim: int
    pre_ln: bool
    word_emb: torch.Tensor
    emb_scale: float
    pos_emb: torch.Tensor
    pos_offset: int
    layers: list[LayerWeights]
    lm_head: Linear
    cross_dim: int
    pos_padding_idx: int | None = None
    type_emb: torch.Tensor | None = None
    emb_norm: Norm | None = None
    final_norm: Norm | None = None
    head_dense: Linear | None = None
    head_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    head_norm: Norm | None = None
    logits_bias: torch.Tensor | None = None
    max_positions: int = field(init=False)

    def __post_init__(self) -> None:
        # Tokens a row can generate: the k-th reads row k + pos_offset of the table, or
        # padding_idx + 1 + k in RoBERTa / fairseq style (see the engine's _advance).
        first = self.pos_offset if self.pos_padding_idx is None else self.pos_padding_idx + 1
        self.max_positions = self.pos_emb.shape[0] - first

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features
