"""One uniform description of a cross-attending decoder, per-family adapters that
fill it from a Hugging Face model, and ONE generic decode step over it.

Why a description instead of calling the HF decoder: HF's decoder forward costs tens
of Python-level module calls, cache objects, mask builders and a torch.cat per layer
per step; for small models that overhead dominates. Every supported family is the
same transformer decoder with a few switches (pre- vs post-LN, positional kind and
offset, embedding scale / layernorm, BERT's LM-head transform, final_logits_bias),
so one step function covers them all. The weights are the model's own tensors
(views, not copies) except the fused self-attention q|k|v projection. On CPU in
float32 the step's layer loop runs as one native call (native_step.cpp, see
native.py): the same arithmetic without the per-op cost that dominates small models.

No Ray here.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .native import act_code, load_native, native_error

log = logging.getLogger(__name__)


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
class LayerSpec:
    """One decoder layer: self-attention, cross-attention, feed-forward.

    `qkv` is the fused self-attention projection (rows: q, then k, then v);
    `scale` multiplies the queries (1/sqrt(head_dim), and GPT-2's optional
    1/(layer+1)). The three norms sit before their block (pre_ln) or after the
    residual add (post_ln) as DecoderSpec.pre_ln says.
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
class DecoderSpec:
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
    layers: list[LayerSpec]
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


# --------------------------------------------------------------------------- adapters


def _lin(module: torch.nn.Module) -> Linear:
    return Linear(module.weight, module.bias)


def _conv1d(module: torch.nn.Module) -> Linear:
    # GPT-2's Conv1D stores [in, out]; the transposed view feeds F.linear without a copy.
    return Linear(module.weight.t(), module.bias)


def _norm(module: torch.nn.Module | None) -> Norm | None:
    if module is None:
        return None
    return Norm(module.weight, module.bias, float(module.eps))


_GELU_C1 = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C3 = _GELU_C1 * 0.044715


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(c (x + 0.044715 x^3))), as x * sigmoid(2c (...)):
    the same function (0.5 (1 + tanh z) = sigmoid(2z)) in ops that are cheaper on CPU
    than either HF's five-op form or torch's tanh-approximate gelu."""
    return x * torch.sigmoid(x * (_GELU_C1 + _GELU_C3 * x * x))


def fast_act(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same activation as one torch op instead of an nn.Module (or five ops).

    GPT-2's gelu_new spells the tanh approximation out in five tensor ops; the sigmoid
    form below is the same function (equal up to float rounding).
    """
    name = type(act).__name__
    if name == "NewGELUActivation":
        return _gelu_tanh
    if name in ("GELUActivation", "GELUTanh") and callable(getattr(act, "act", None)):
        return act.act
    if isinstance(act, torch.nn.SiLU):
        return F.silu
    if isinstance(act, torch.nn.ReLU):
        return F.relu
    return act


def _fuse(q: Linear, k: Linear, v: Linear, scale: float) -> Linear:
    """q|k|v in one matmul; the query rows carry the attention scale, so the step
    never multiplies scores (one op less per layer)."""
    weight = torch.cat([q.weight * scale, k.weight, v.weight], dim=0)
    bias = None
    if q.bias is not None:
        bias = torch.cat([q.bias * scale, k.bias, v.bias], dim=0)
    return Linear(weight, bias)


def _scaled(lin: Linear, scale: float) -> Linear:
    return Linear(lin.weight * scale, None if lin.bias is None else lin.bias * scale)


def _bert_like(decoder: torch.nn.Module, family: str) -> DecoderSpec:
    """BertLMHeadModel, RobertaForCausalLM (and its clones xlm-roberta, camembert)."""
    config = decoder.config
    base = decoder.bert if family == "bert" else decoder.roberta
    emb = base.embeddings
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise UnsupportedFamily(f"position_embedding_type={config.position_embedding_type} (only absolute)")
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    scale = head_dim**-0.5
    layers = []
    for layer in base.encoder.layer:
        sa, ca = layer.attention, layer.crossattention
        layers.append(
            LayerSpec(
                qkv=_fuse(_lin(sa.self.query), _lin(sa.self.key), _lin(sa.self.value), scale),
                self_out=_lin(sa.output.dense),
                self_norm=_norm(sa.output.LayerNorm),
                cross_q=_scaled(_lin(ca.self.query), scale),
                cross_k=_lin(ca.self.key),
                cross_v=_lin(ca.self.value),
                cross_out=_lin(ca.output.dense),
                cross_norm=_norm(ca.output.LayerNorm),
                fc1=_lin(layer.intermediate.dense),
                fc2=_lin(layer.output.dense),
                act=fast_act(layer.intermediate.intermediate_act_fn),
                ffn_norm=_norm(layer.output.LayerNorm),
                scale=scale,
            )
        )
    if family == "bert":
        head = decoder.cls.predictions
        dense, act, norm = head.transform.dense, fast_act(head.transform.transform_act_fn), head.transform.LayerNorm
        out = head.decoder
        lm_bias = out.bias if out.bias is not None else head.bias
    else:
        head = decoder.lm_head
        dense, norm, out = head.dense, head.layer_norm, head.decoder
        # RobertaLMHead.forward calls its module-level gelu: use that very function.
        act = sys.modules[type(head).__module__].gelu
        lm_bias = out.bias if out.bias is not None else head.bias
    pos_padding = None if family == "bert" else emb.padding_idx
    return DecoderSpec(
        family=family,
        hidden=config.hidden_size,
        heads=heads,
        head_dim=head_dim,
        pre_ln=False,
        word_emb=emb.word_embeddings.weight,
        emb_scale=1.0,
        pos_emb=emb.position_embeddings.weight,
        pos_offset=0,
        pos_padding_idx=pos_padding,
        type_emb=emb.token_type_embeddings.weight[0],
        emb_norm=_norm(emb.LayerNorm),
        layers=layers,
        head_dense=_lin(dense),
        head_act=act,
        head_norm=_norm(norm),
        lm_head=Linear(out.weight, lm_bias),
        cross_dim=layers[0].cross_k.weight.shape[1],
    )


def _gpt2(decoder: torch.nn.Module) -> DecoderSpec:
    config = decoder.config
    tr = decoder.transformer
    heads = config.n_head
    head_dim = config.n_embd // heads
    layers = []
    for block in tr.h:
        attn, cross = block.attn, block.crossattention
        scale = attn.scaling  # 1/sqrt(d) and, when configured, 1/(layer_idx+1)
        c_attn = _conv1d(attn.c_attn)  # already fused q|k|v, [3D, D] view
        d = config.n_embd
        qkv = Linear(
            torch.cat([c_attn.weight[:d] * scale, c_attn.weight[d:]], dim=0),
            torch.cat([c_attn.bias[:d] * scale, c_attn.bias[d:]], dim=0),
        )
        kv = _conv1d(cross.c_attn)
        layers.append(
            LayerSpec(
                qkv=qkv,
                self_out=_conv1d(attn.c_proj),
                self_norm=_norm(block.ln_1),
                cross_q=_scaled(_conv1d(cross.q_attn), cross.scaling),
                cross_k=Linear(kv.weight[:d], kv.bias[:d]),
                cross_v=Linear(kv.weight[d:], kv.bias[d:]),
                cross_out=_conv1d(cross.c_proj),
                cross_norm=_norm(block.ln_cross_attn),
                fc1=_conv1d(block.mlp.c_fc),
                fc2=_conv1d(block.mlp.c_proj),
                act=fast_act(block.mlp.act),
                ffn_norm=_norm(block.ln_2),
                scale=scale,
            )
        )
    return DecoderSpec(
        family="gpt2",
        hidden=config.n_embd,
        heads=heads,
        head_dim=head_dim,
        pre_ln=True,
        word_emb=tr.wte.weight,
        emb_scale=1.0,
        pos_emb=tr.wpe.weight,
        pos_offset=0,
        layers=layers,
        final_norm=_norm(tr.ln_f),
        lm_head=Linear(decoder.lm_head.weight, decoder.lm_head.bias),
        cross_dim=layers[0].cross_k.weight.shape[1],
    )


def _bart_layers(decoder_layers, heads: int, head_dim: int) -> list[LayerSpec]:
    """BART / mBART / Marian / TrOCR decoder layers (identical structure, norms named alike)."""
    scale = head_dim**-0.5
    layers = []
    for layer in decoder_layers:
        sa, ca = layer.self_attn, layer.encoder_attn
        layers.append(
            LayerSpec(
                qkv=_fuse(_lin(sa.q_proj), _lin(sa.k_proj), _lin(sa.v_proj), scale),
                self_out=_lin(sa.out_proj),
                self_norm=_norm(layer.self_attn_layer_norm),
                cross_q=_scaled(_lin(ca.q_proj), scale),
                cross_k=_lin(ca.k_proj),
                cross_v=_lin(ca.v_proj),
                cross_out=_lin(ca.out_proj),
                cross_norm=_norm(layer.encoder_attn_layer_norm),
                fc1=_lin(layer.fc1),
                fc2=_lin(layer.fc2),
                act=fast_act(layer.activation_fn),
                ffn_norm=_norm(layer.final_layer_norm),
                scale=scale,
            )
        )
    return layers


def _bart_family(
    stack: torch.nn.Module, lm_head: torch.nn.Module, logits_bias: torch.Tensor | None, family: str
) -> DecoderSpec:
    """The decoder stack of BART, mBART or Marian (native seq2seq or *ForCausalLM)."""
    config = stack.config
    heads = config.decoder_attention_heads
    d_model = config.d_model
    head_dim = d_model // heads
    if family == "marian":
        emb_scale = float(stack.embed_scale)
        pos_emb, pos_offset = stack.embed_positions.weight, 0
    else:
        emb_scale = float(getattr(stack.embed_tokens, "embed_scale", 1.0))
        pos_emb, pos_offset = stack.embed_positions.weight, int(stack.embed_positions.offset)
    return DecoderSpec(
        family=family,
        hidden=d_model,
        heads=heads,
        head_dim=head_dim,
        pre_ln=family == "mbart",
        word_emb=stack.embed_tokens.weight,
        emb_scale=emb_scale,
        pos_emb=pos_emb,
        pos_offset=pos_offset,
        emb_norm=_norm(getattr(stack, "layernorm_embedding", None)),
        layers=_bart_layers(stack.layers, heads, head_dim),
        final_norm=_norm(getattr(stack, "layer_norm", None)),
        lm_head=Linear(lm_head.weight, lm_head.bias),
        logits_bias=None if logits_bias is None else logits_bias.reshape(-1),
        cross_dim=stack.layers[0].encoder_attn.k_proj.weight.shape[1],
    )


def _trocr(decoder: torch.nn.Module) -> DecoderSpec:
    config = decoder.config
    stack = decoder.model.decoder
    heads = config.decoder_attention_heads
    head_dim = config.hidden_size // heads
    emb_scale = float(getattr(stack.embed_tokens, "embed_scale", 1.0))
    pos_padding = None
    if config.use_learned_position_embeddings:
        pos_emb, pos_offset = stack.embed_positions.weight, int(stack.embed_positions.offset)
    else:
        # Sinusoidal table with fairseq positions: pad tokens get position padding_idx.
        module = stack.embed_positions
        pos_emb = module.weights.to(device=stack.embed_tokens.weight.device, dtype=stack.embed_tokens.weight.dtype)
        pos_offset, pos_padding = 0, module.padding_idx
    return DecoderSpec(
        family="trocr",
        hidden=config.hidden_size,
        heads=heads,
        head_dim=head_dim,
        pre_ln=False,
        word_emb=stack.embed_tokens.weight,
        emb_scale=emb_scale,
        pos_emb=pos_emb,
        pos_offset=pos_offset,
        pos_padding_idx=pos_padding,
        emb_norm=_norm(stack.layernorm_embedding),
        layers=_bart_layers(stack.layers, heads, head_dim),
        lm_head=Linear(decoder.output_projection.weight, decoder.output_projection.bias),
        cross_dim=stack.layers[0].encoder_attn.k_proj.weight.shape[1],
    )


ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")
BART_LIKE = ("bart", "mbart", "marian")
FAST_FAMILIES: tuple[str, ...] = ("bert", *ROBERTA_LIKE, "gpt2", "trocr", *BART_LIKE)


def decoder_family(model: torch.nn.Module) -> str:
    """The model_type of a combiner's decoder (the model's own for native seq2seq)."""
    if is_composite(model):
        return str(model.config.decoder.model_type)
    return str(model.config.model_type)


def is_composite(model: torch.nn.Module) -> bool:
    """EncoderDecoderModel / VisionEncoderDecoderModel (two checkpoints joined), not native seq2seq."""
    return type(model).__name__ in ("EncoderDecoderModel", "VisionEncoderDecoderModel")


def extract_decoder(model: torch.nn.Module) -> DecoderSpec:
    """Fill a DecoderSpec from a combiner's model, or raise UnsupportedFamily saying why."""
    family = decoder_family(model)
    if family not in FAST_FAMILIES:
        raise UnsupportedFamily(f"decoder family '{family}' has no fast path (fast: {', '.join(FAST_FAMILIES)})")
    native = not is_composite(model)
    try:
        if native:
            if family not in BART_LIKE:
                raise UnsupportedFamily(f"native seq2seq family '{family}' has no fast path")
            stack = model.get_decoder() if hasattr(model, "get_decoder") else model.model.decoder
            return _bart_family(stack, model.lm_head, getattr(model, "final_logits_bias", None), family)
        decoder = model.decoder
        if family == "bert" or family in ROBERTA_LIKE:
            return _bert_like(decoder, "bert" if family == "bert" else "roberta")
        if family == "gpt2":
            return _gpt2(decoder)
        if family == "trocr":
            return _trocr(decoder)
        return _bart_family(decoder.model.decoder, decoder.lm_head, None, family)
    except UnsupportedFamily:
        raise
    except (AttributeError, IndexError, TypeError) as exc:
        # A checkpoint whose module layout differs from the installed transformers' one.
        raise UnsupportedFamily(f"decoder family '{family}': unexpected module layout ({exc})") from exc


# --------------------------------------------------------------------------- the step


class DecoderRunner:
    """Static buffers for a fixed set of slots and ONE decode step over a DecoderSpec.

    Rows are slot-major: row = slot * group + g, where group is the number of
    hypotheses per input (beams, or samples per input). Buffers:

    - self-attention K|V per layer, [rows, T, 2, heads, head_dim], T = max_new_tokens,
      written in place at each row's own position: a row's new K|V is one contiguous
      block, so the write is one index_copy_ of [rows, 2*hidden] (a scatter into a
      head-major layout cost 2.5x as much; no torch.cat). A row's keys are the prefix
      [0, position], so a step attends over the first `self_w` columns only, the
      oldest live row's length, and a per-row bias hides the columns a younger row has
      not written. SDPA reads the (sequence, head) layout through strides, without a
      copy, and ran 15% faster on it than on head-major slices (CPU, batch 32);
    - cross-attention K|V per layer, [slots, src_cap, 2, heads, head_dim], computed once
      per input and shared by its beams: queries [slots, heads, group, d] broadcast
      against them (no repeat_interleave, no per-beam copy);
    - step inputs (token, position, column, biases) that a CUDA graph reads.

    `forward(n, src_w, self_w)` runs the first n slots over the first src_w source and
    self_w target positions. With static shapes (CUDA) it computes a bucket of slots
    (the next power of two) over src_cap source and all T columns, replaying a graph
    captured per (bucket, src_cap); on CPU it runs eagerly on exactly n slots and the
    used widths (shapes vary, which costs nothing there), unless static_shapes=True
    asks for the graph path's shapes (what the tests check on CPU). There, in float32,
    the layers run through native_step.cpp when it builds (`native`; `native_reason`
    says why not), with the rows split into one group per thread (`chunks`).
    """

    def __init__(
        self,
        spec: DecoderSpec,
        *,
        slots: int,
        group: int,
        max_new_tokens: int,
        src_cap: int,
        device: torch.device,
        dtype: torch.dtype,
        cuda_graphs: bool = True,
        static_shapes: bool | None = None,
        native: bool = True,
    ) -> None:
        self.spec = spec
        self.slots, self.group = slots, group
        self.rows = slots * group
        self.T = max_new_tokens
        self.device, self.dtype = device, dtype
        self.min_value = torch.finfo(dtype).min
        H, d, L = spec.heads, spec.head_dim, len(spec.layers)
        z = dict(device=device, dtype=dtype)
        self.kv_cache = [torch.zeros(self.rows, self.T, 2, H, d, **z) for _ in range(L)]
        self.use_graphs = cuda_graphs and device.type == "cuda"
        # Static shapes are what a CUDA graph captures; on CPU they run eagerly (tests
        # check the graph path's arithmetic there), else CPU runs the exact shapes.
        self.static = bool(static_shapes) or self.use_graphs
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.src_cap = 0
        self.cross_kv: list[torch.Tensor] = []
        self.cross_bias = torch.zeros(0, device=device, dtype=dtype)
        self.grow_source(src_cap)
        self.tok_in = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.pos_in = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.age_in = torch.zeros(self.rows, dtype=torch.long, device=device)  # column each row writes
        self.row_base = torch.arange(self.rows, device=device) * self.T  # row's first slot in a flat cache
        self.self_bias = torch.full((self.rows, self.T), self.min_value, **z)
        self._flat = [
            (
                lay.qkv.weight, lay.qkv.bias, lay.self_out.weight, lay.self_out.bias,
                lay.self_norm.weight, lay.self_norm.bias, lay.self_norm.eps,
                lay.cross_q.weight, lay.cross_q.bias, lay.cross_out.weight, lay.cross_out.bias,
                lay.cross_norm.weight, lay.cross_norm.bias, lay.cross_norm.eps,
                lay.fc1.weight, lay.fc1.bias, lay.act, lay.fc2.weight, lay.fc2.bias,
                lay.ffn_norm.weight, lay.ffn_norm.bias, lay.ffn_norm.eps,
            )
            for lay in spec.layers
        ]
        self.native_reason: str | None = None  # why the native layer step is off, if it is
        self._native = self._native_layers() if native else None
        if not native:
            self.native_reason = "native=False"

    def _native_layers(self) -> Any | None:
        """native_step.cpp's Layers over this spec's weights, when this runner can use it:
        CPU, float32, exact shapes (static shapes mirror what a CUDA graph runs), and an
        activation it knows."""
        spec = self.spec
        if self.device.type != "cpu" or self.dtype != torch.float32 or self.static:
            self.native_reason = "CPU float32 exact-shape steps only"
            return None
        acts = {act_code(lay.act) for lay in spec.layers}
        if len(acts) != 1 or None in acts:
            self.native_reason = f"activation {type(spec.layers[0].act).__name__} has no native form"
            return None
        module = load_native()
        if module is None:
            self.native_reason = native_error()
            return None
        weights, eps = [], []
        for lay in spec.layers:
            for part in (lay.self_norm, lay.qkv, lay.self_out, lay.cross_norm, lay.cross_q, lay.cross_out, lay.ffn_norm, lay.fc1, lay.fc2):
                bias = part.bias if part.bias is not None else torch.zeros(part.weight.shape[0], dtype=self.dtype)
                weights += [part.weight, bias.contiguous()]
            eps += [lay.self_norm.eps, lay.cross_norm.eps, lay.ffn_norm.eps]
        return module.Layers(weights, eps, spec.heads, acts.pop(), spec.pre_ln)

    # -- buffers

    def grow_source(self, needed: int) -> None:
        """Make the cross-attention buffers hold `needed` source positions (keeps contents)."""
        if needed <= self.src_cap:
            return
        quantum = 64 if self.device.type == "cuda" else 8
        cap = max(quantum, -(-needed // quantum) * quantum)
        H, d = self.spec.heads, self.spec.head_dim
        z = dict(device=self.device, dtype=self.dtype)
        old = self.src_cap
        grown = []
        for i in range(len(self.spec.layers)):
            new = torch.zeros(self.slots, cap, 2, H, d, **z)
            if old:
                new[:, :old] = self.cross_kv[i]
            grown.append(new)
        self.cross_kv = grown
        bias = torch.full((self.slots, cap), self.min_value, **z)
        if old:
            bias[:, :old] = self.cross_bias
        self.cross_bias = bias
        self.src_cap = cap
        self._graphs.clear()  # captured graphs point at the old buffers

    def project_source(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention K|V of every layer for encoder states [b, src, cross_dim] -> [b, src, 2, H, d]."""
        b, src, _ = states.shape
        H, d = self.spec.heads, self.spec.head_dim
        out = []
        for layer in self.spec.layers:
            k = layer.cross_k(states).view(b, src, H, d)
            v = layer.cross_v(states).view(b, src, H, d)
            out.append(torch.stack((k, v), dim=2))
        return out

    def slot_tensors(self) -> list[torch.Tensor]:
        """Every buffer indexed by slot (views shaped [slots, ...]), for moving slots."""
        views = [t.view(self.slots, self.group, *t.shape[1:]) for t in self.kv_cache]
        views += [*self.cross_kv, self.cross_bias]
        views += [
            t.view(self.slots, self.group, *t.shape[1:]) for t in (self.tok_in, self.pos_in, self.age_in, self.self_bias)
        ]
        return views

    # -- the step

    def _forward(self, n: int, src_w: int, self_w: int) -> torch.Tensor:
        """Logits [n*group, vocab] for the staged inputs of the first n slots.

        Written flat (weights unpacked into locals, torch functions called directly)
        because for small models Python overhead per op is what a step costs.
        """
        spec = self.spec
        G, H, d = self.group, spec.heads, spec.head_dim
        N = n * G
        D = spec.hidden
        shape = (D,)
        linear, layer_norm, sdpa = F.linear, F.layer_norm, F.scaled_dot_product_attention
        x = F.embedding(self.tok_in[:N], spec.word_emb)
        if self._native is not None:
            return self._native_forward(x, n, src_w, self_w)
        x = self._embed(x, N)
        self_bias = self.self_bias[:N, :self_w].view(N, 1, 1, self_w)
        cross_bias = self.cross_bias[:n, :src_w].view(n, 1, 1, src_w)
        # each row writes its new K|V (one block of 2*D) at its own position
        age = self.age_in[:N]
        if self.static:  # rows past n in a bucket may be finished ones, at age T
            age = age.clamp(max=self.T - 1)
        write_at = self.row_base[:N] + age
        pre = spec.pre_ln
        for cache, cross, p in zip(self.kv_cache, self.cross_kv, self._flat, strict=True):
            (qkv_w, qkv_b, so_w, so_b, n1_w, n1_b, e1, cq_w, cq_b, co_w, co_b, n2_w, n2_b, e2,
             f1_w, f1_b, act, f2_w, f2_b, n3_w, n3_b, e3) = p
            # self-attention over the row's cached prefix (the scale is folded into the q weights)
            h = layer_norm(x, shape, n1_w, n1_b, e1) if pre else x
            qkv = linear(h, qkv_w, qkv_b)
            cache.view(-1, 2 * D).index_copy_(0, write_at, qkv[:, D:])
            keys = cache[:N, :self_w]  # [N, w, 2, H, d]
            q = qkv[:, :D].view(N, H, 1, d)
            a = sdpa(q, keys[:, :, 0].transpose(1, 2), keys[:, :, 1].transpose(1, 2), attn_mask=self_bias, scale=1.0)
            a = linear(a.view(N, D), so_w, so_b)
            x = x + a if pre else layer_norm(x + a, shape, n1_w, n1_b, e1)
            # cross-attention: the group's queries share their slot's K|V
            h = layer_norm(x, shape, n2_w, n2_b, e2) if pre else x
            cq = linear(h, cq_w, cq_b).view(n, G, H, d).transpose(1, 2)  # [n, H, G, d]
            kv = cross[:n, :src_w]  # [n, src, 2, H, d]
            a = sdpa(cq, kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2), attn_mask=cross_bias, scale=1.0)
            a = linear(a.transpose(1, 2).reshape(N, D), co_w, co_b)
            x = x + a if pre else layer_norm(x + a, shape, n2_w, n2_b, e2)
            # feed-forward
            h = layer_norm(x, shape, n3_w, n3_b, e3) if pre else x
            a = linear(act(linear(h, f1_w, f1_b)), f2_w, f2_b)
            x = x + a if pre else layer_norm(x + a, shape, n3_w, n3_b, e3)
        return self._head(x)

    def _embed(self, x: torch.Tensor, N: int) -> torch.Tensor:
        """Input embeddings [N, hidden] from the word embeddings x of the staged tokens."""
        spec = self.spec
        if spec.emb_scale != 1.0:
            x = x * spec.emb_scale
        if spec.type_emb is not None:
            x = x + spec.type_emb
        x = x + F.embedding(self.pos_in[:N], spec.pos_emb)
        if spec.emb_norm is not None:
            x = spec.emb_norm(x)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.final_norm is not None:
            x = spec.final_norm(x)
        if spec.head_dense is not None:
            x = spec.head_norm(spec.head_act(spec.head_dense(x)))
        logits = spec.lm_head(x)
        if spec.logits_bias is not None:
            logits = logits + spec.logits_bias
        return logits

    def chunks(self) -> int:
        """Row groups the native step runs in parallel: one per intra-op thread. Splitting
        rows beat one group with ATen's threading inside each matmul even where every
        group streams all the weights (2 cores, base size, 397 MB of layers: 95 against
        106 ms for 32 rows, 233 against 303 ms for 128), and by more at small sizes."""
        return torch.get_num_threads()

    def _native_forward(self, x: torch.Tensor, n: int, src_w: int, self_w: int) -> torch.Tensor:
        N = n * self.group
        x = self._embed(x, N).contiguous()  # a fresh tensor (the position add), updated in place
        self._native.run(
            x, self.kv_cache, self.cross_kv, self.age_in, self.self_bias, self.cross_bias, self_w, src_w, self.group, self.chunks()
        )
        return self._head(x)

    def bucket(self, n: int) -> int:
        """Slots a CUDA graph computes for n active ones: the next power of two (capped at
        `slots`), so a handful of graphs serve every n and at most half the rows idle."""
        return min(self.slots, 1 << max(0, math.ceil(math.log2(max(n, 1)))))

    def computed_rows(self, n: int) -> int:
        return (self.bucket(n) if self.static else n) * self.group

    def forward(self, n: int, src_w: int, self_w: int) -> torch.Tensor:
        """Run the step for the first n slots; returns logits [n*group, vocab] (a view)."""
        if not self.static:
            return self._forward(n, src_w, self_w)
        bucket = self.bucket(n)
        if not self.use_graphs:
            return self._forward(bucket, self.src_cap, self.T)[: n * self.group]
        key = (bucket, self.src_cap)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(bucket, self.src_cap)
            self._graphs[key] = entry
        graph, out = entry
        graph.replay()
        return out[: n * self.group]

    def _capture(self, n: int, src_w: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the step for (n, src_w). Inputs are already staged for the real step, and
        the step only writes K/V at the staged positions from staged inputs, so the warm-up
        and capture runs write exactly what the replay will: capturing is side-effect free."""
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(n, src_w, self.T)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(n, src_w, self.T)
        return graph, out
