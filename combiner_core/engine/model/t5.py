"""T5, mT5, UMT5 and T5 v1.1 / Flan-T5 decoders (native seq2seq).

What differs from the BART-style decoders, and how the description says it:
- RMS norm (T5LayerNorm: no mean subtraction, no bias) before each block, and a final
  one: rms_norm=True, pre_ln=True;
- no biases on any linear, and NO 1/sqrt(d) query scaling (T5 folds it into its
  initialization): scale 1.0;
- no absolute positions: a relative position bias added to the self-attention scores,
  bucketed by key_position - query_position (unidirectional in the decoder). T5 and mT5
  compute it from the first layer's table and share it with every layer; UMT5 has a
  table per layer. Cross-attention has none;
- feed-forward DenseReluDense (wi, act, wo) or gated (act(wi_0 h) * wi_1 h, then wo);
- the attention width num_heads * d_kv may differ from d_model (Flan-T5 small: 6 x 64
  against 512);
- before lm_head the hidden states are multiplied by d_model**-0.5 when the config
  scales decoder outputs (transformers 5: config.scale_decoder_outputs, the
  checkpoint's tie_word_embeddings; before it, tie_word_embeddings). mT5's forward in
  transformers 5 never scales (its checkpoints untie the head).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .activations import fast_act
from .description import DecoderDescription, LayerWeights, Linear, Norm, UnsupportedFamily
from .weights import fused_qkv, read_linear

T5_LIKE = ("t5", "mt5", "umt5")


def _norm(module: torch.nn.Module) -> Norm:
    return Norm(module.weight, None, float(module.variance_epsilon), rms=True)


def _wo(module: torch.nn.Module, dtype: torch.dtype) -> Linear:
    """The feed-forward output projection in the decoder's dtype. transformers keeps T5's
    `wo` in float32 when it loads a checkpoint in half precision (_keep_in_fp32_modules),
    and its residual stream turns float32 from there; the engine's step runs one dtype, so
    it takes a copy of wo in the others' dtype (half-precision outputs are held to HF's
    only loosely anyway)."""
    weight = module.weight
    return Linear(weight if weight.dtype == dtype else weight.to(dtype), None)


def _output_scale(config, family: str) -> float:
    if family == "mt5":
        scaled = bool(getattr(config, "scale_decoder_outputs", False))
    else:
        scaled = bool(getattr(config, "scale_decoder_outputs", config.tie_word_embeddings))
    return float(config.d_model) ** -0.5 if scaled else 1.0


def t5_family(model: torch.nn.Module, family: str) -> DecoderDescription:
    """The decoder of a T5ForConditionalGeneration / MT5ForConditionalGeneration /
    UMT5ForConditionalGeneration."""
    config = model.config
    stack = model.get_decoder()
    heads, head_dim = int(config.num_heads), int(config.d_kv)
    gated = bool(config.is_gated_act)
    layers = []
    for block in stack.block:
        sa, ca = block.layer[0].SelfAttention, block.layer[1].EncDecAttention
        ff = block.layer[2].DenseReluDense
        if gated:
            # wi_0 | wi_1 in one matmul: the step splits the output in halves
            fc1 = Linear(torch.cat([ff.wi_0.weight, ff.wi_1.weight], dim=0), None)
        else:
            fc1 = read_linear(ff.wi)
        layers.append(
            LayerWeights(
                qkv=fused_qkv(read_linear(sa.q), read_linear(sa.k), read_linear(sa.v), 1.0),
                self_out=read_linear(sa.o),
                self_norm=_norm(block.layer[0].layer_norm),
                cross_q=read_linear(ca.q),
                cross_k=read_linear(ca.k),
                cross_v=read_linear(ca.v),
                cross_out=read_linear(ca.o),
                cross_norm=_norm(block.layer[1].layer_norm),
                fc1=fc1,
                fc2=_wo(ff.wo, sa.q.weight.dtype),
                act=fast_act(ff.act),
                ffn_norm=_norm(block.layer[2].layer_norm),
                scale=1.0,
                gated=gated,
            )
        )
    if family == "umt5":
        tables = [block.layer[0].SelfAttention.relative_attention_bias.weight for block in stack.block]
    else:
        first = stack.block[0].layer[0].SelfAttention
        if not getattr(first, "has_relative_attention_bias", False):
            raise UnsupportedFamily(f"'{family}' decoder without a relative attention bias in its first layer")
        tables = [first.relative_attention_bias.weight]
    lm_head = model.get_output_embeddings()
    return DecoderDescription(
        family=family,
        hidden=int(config.d_model),
        heads=heads,
        head_dim=head_dim,
        pre_ln=True,
        word_emb=stack.embed_tokens.weight,
        emb_scale=1.0,
        pos_emb=None,
        pos_offset=0,
        layers=layers,
        final_norm=_norm(stack.final_layer_norm),
        lm_head=Linear(lm_head.weight, lm_head.bias),
        cross_dim=layers[0].cross_k.weight.shape[1],
        rms_norm=True,
        rel_bias=tables,
        rel_buckets=int(config.relative_attention_num_buckets),
        rel_max_distance=int(config.relative_attention_max_distance),
        out_scale=_output_scale(config, family),
    )


def t5_encoder_forward(stack: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A forward of a T5 / mT5 encoder stack (T5Stack) with transformers' float32
    arithmetic (call it on float32 weights only: half precision has HF's clamps and
    float32 `wo`), or None where it does not apply (UMT5: the HF module runs).

    Why: transformers' sdpa path combines the relative position bias with the padding
    mask again in every layer (`create_position_bias_mask`: a [batch, heads, L, L]
    torch.where and copy), 8.5% of the t5-small encoder's time in a py-spy profile
    (128 inputs of 32-256 tokens, one thread), and T5LayerNorm is five ops where
    F.rms_norm is one. Here the bias and mask are combined once per call. The modules'
    own linears and DenseReluDense are called, so an int8 copy (quantize.quantized_copy)
    runs through here too. Padded positions' outputs are not HF's (nothing reads them).
    """
    if type(stack).__name__ not in ("T5Stack", "MT5Stack") or stack.is_decoder or not len(stack.block):
        return None
    blocks = list(stack.block)
    first = blocks[0].layer[0].SelfAttention
    if not getattr(first, "has_relative_attention_bias", False):
        return None

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """lengths: each row's real length; given, each row attends over its own columns with
        its own [1, H, n, n] bias, the arithmetic it gets encoded alone (the int8 engine's
        rows may not depend on the batch, encoder.py), while the linears stay batched."""
        x = stack.embed_tokens(input_ids)
        b, L = input_ids.shape
        if lengths is not None:  # each row's own [1, H, n, n] bias
            own = {n: first.compute_bias(n, n, device=x.device) for n in set(lengths)}
        else:
            # [1, H, L, L] bias (bidirectional buckets), padding keys at dtype min: what
            # create_position_bias_mask gives every layer
            bias = first.compute_bias(L, L, device=x.device)
            if not bool(attention_mask.all()):
                bias = bias.masked_fill((attention_mask == 0)[:, None, None, :], torch.finfo(x.dtype).min)
        shape = (x.shape[-1],)
        for block in blocks:
            sa, ff = block.layer[0], block.layer[-1]
            att = sa.SelfAttention
            heads, dk = att.n_heads, att.key_value_proj_dim
            h = F.rms_norm(x, shape, sa.layer_norm.weight, sa.layer_norm.variance_epsilon)
            q = att.q(h).view(b, L, heads, dk).transpose(1, 2)
            k = att.k(h).view(b, L, heads, dk).transpose(1, 2)
            v = att.v(h).view(b, L, heads, dk).transpose(1, 2)
            if lengths is None:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # T5: no 1/sqrt(d)
            else:
                a = q.new_zeros(q.shape)
                for r, n in enumerate(lengths):
                    a[r : r + 1, :, :n] = F.scaled_dot_product_attention(
                        q[r : r + 1, :, :n], k[r : r + 1, :, :n], v[r : r + 1, :, :n], attn_mask=own[n], scale=1.0)
            x = x + att.o(a.transpose(1, 2).reshape(b, L, heads * dk))
            h = F.rms_norm(x, shape, ff.layer_norm.weight, ff.layer_norm.variance_epsilon)
            x = x + ff.DenseReluDense(h)
        final = stack.final_layer_norm
        return F.rms_norm(x, shape, final.weight, final.variance_epsilon)

    return forward
