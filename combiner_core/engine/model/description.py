"""The decoder description: one uniform record of a cross-attending decoder's weights
and switches (pre- vs post-LN, LayerNorm vs T5's RMS norm, absolute positions with
their offset or T5's relative position bias, embedding scale / layernorm, plain or
gated feed-forward, BERT's LM-head transform, output scale, final_logits_bias), filled
per family (bert.py, gpt2.py, bart.py, trocr.py, t5.py) and run by one generic step
(runner.py).

The weights are the model's own tensors (views, not copies) except the fused
self-attention q|k|v projection.
"""

from __future__ import annotations

import dataclasses
import math
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


def rms_norm(x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """T5LayerNorm (no mean subtraction, no bias), with F.layer_norm's signature so the
    step can call either. In float32 that is torch's one-op rms_norm (equal up to
    rounding); otherwise HF's own arithmetic: the variance in float32 whatever the dtype
    (so float64 carries float32's rounding there, as in HF), a half-precision result cast
    back before the weight multiplies it."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, shape, weight, eps)
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    h = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        h = h.to(weight.dtype)
    return weight * h


@dataclass
class Norm:
    """A LayerNorm's parameters, or T5's RMS norm's (rms=True: weight only)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    rms: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm = rms_norm if self.rms else F.layer_norm
        return norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclass
class LayerWeights:
    """One decoder layer: self-attention, cross-attention, feed-forward.

    `qkv` is the fused self-attention projection (rows: q, then k, then v);
    `scale` multiplies the queries (1/sqrt(head_dim), and GPT-2's optional
    1/(layer+1)). The three norms sit before their block (pre_ln) or after the
    residual add (post_ln) as DecoderDescription.pre_ln says. `gated` (T5 v1.1, mT5):
    fc1 holds wi_0 then wi_1 stacked ([2 * ffn, hidden], one matmul for both) and the
    feed-forward is fc2(act(wi_0 h) * wi_1 h).
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
    gated: bool = False

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        """The feed-forward block on normed input h (no residual)."""
        y = self.fc1(h)
        if self.gated:
            half = y.shape[-1] // 2
            return self.fc2(self.act(y[..., :half]) * y[..., half:])
        return self.fc2(self.act(y))


def relative_buckets(offsets: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's decoder (unidirectional) relative-position bucket of key_position - query_position,
    as transformers' T5Attention._relative_position_bucket(bidirectional=False): exact
    buckets for distances under num_buckets // 2, logarithmic ones up to max_distance."""
    distance = -torch.clamp(offsets, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.clamp(large, max=num_buckets - 1)
    return torch.where(distance < max_exact, distance, large)


@dataclass
class DecoderDescription:
    """Everything the generic step needs to run one decoder family.

    Attributes:
        family: the decoder's model_type (bert, roberta, gpt2, trocr, bart, mbart, marian...).
        hidden, heads, head_dim: the decoder's width.
        pre_ln: True for GPT-2 / mBART (norm before each block), False for BERT / BART.
        word_emb: [vocab, hidden] input embedding; multiplied by emb_scale.
        pos_emb: [positions, hidden] absolute positional table, indexed by
            position + pos_offset (BART's learned table has offset 2); None for T5's
            relative positions (no table, no position limit).
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
        rms_norm: every norm is T5's RMS norm (no mean, no bias) instead of LayerNorm.
        rel_bias: T5's relative position bias tables, each [buckets, heads], added to
            the self-attention scores: one shared by every layer (T5, mT5: the first
            layer's), or one per layer (UMT5). None: no relative bias.
        rel_buckets, rel_max_distance: their bucketing (relative_buckets).
        out_scale: multiplies the final hidden states before lm_head (T5's d_model**-0.5
            when its config scales decoder outputs).

    The attention width heads * head_dim (`inner`) may differ from `hidden` (T5's d_kv).
    """

    family: str
    hidden: int
    heads: int
    head_dim: int
    pre_ln: bool
    word_emb: torch.Tensor
    emb_scale: float
    pos_emb: torch.Tensor | None
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
    rms_norm: bool = False
    rel_bias: list[torch.Tensor] | None = None
    rel_buckets: int = 32
    rel_max_distance: int = 128
    out_scale: float = 1.0
    max_positions: int | None = field(init=False)

    def __post_init__(self) -> None:
        # Tokens a row can generate: the k-th reads row k + pos_offset of the table, or
        # padding_idx + 1 + k in RoBERTa / fairseq style (see the engine's _advance).
        # Relative positions have no table, so no limit (describe.max_new_tokens_limit: None).
        if self.pos_emb is None:
            self.max_positions = None
            return
        first = self.pos_offset if self.pos_padding_idx is None else self.pos_padding_idx + 1
        self.max_positions = self.pos_emb.shape[0] - first

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features

    @property
    def inner(self) -> int:
        """The attention width, heads * head_dim (T5: num_heads * d_kv, not always d_model)."""
        return self.heads * self.head_dim

    def relative_bias(self, offsets: torch.Tensor) -> torch.Tensor:
        """[tables, heads, *offsets.shape]: each table's bias for key_position - query_position
        `offsets` (tables: 1 shared, or one per layer; see rel_bias)."""
        assert self.rel_bias is not None  # noqa: S101 - only called for relative-position decoders
        buckets = relative_buckets(offsets, self.rel_buckets, self.rel_max_distance)
        return torch.stack([F.embedding(buckets, table).movedim(-1, 0) for table in self.rel_bias])


def with_linears(
    desc: DecoderDescription, names: tuple[str, ...], convert: Callable[[Linear | None], Linear | None]
) -> DecoderDescription:
    """A copy of `desc` whose layers' `names` linears, BERT's head transform and the LM head
    are `convert`ed (int8, prepacked...); everything else is shared with `desc`."""
    layers = [dataclasses.replace(lay, **{n: convert(getattr(lay, n)) for n in names}) for lay in desc.layers]
    fields = {f.name: getattr(desc, f.name) for f in dataclasses.fields(desc) if f.init}
    fields.update(layers=layers, lm_head=convert(desc.lm_head), head_dense=convert(desc.head_dense))
    return DecoderDescription(**fields)
