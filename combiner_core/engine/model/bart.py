"""BART, mBART and Marian decoders (native seq2seq or *ForCausalLM); their layers also
serve TrOCR (trocr.py)."""

from __future__ import annotations

import torch

from .activations import fast_act
from .description import DecoderDescription, LayerWeights, Linear
from .weights import fused_qkv, read_linear, read_norm, scaled_linear


def bart_layers(decoder_layers, heads: int, head_dim: int) -> list[LayerWeights]:
    """BART / mBART / Marian / TrOCR decoder layers (identical structure, norms named alike)."""
    scale = head_dim**-0.5
    layers = []
    for layer in decoder_layers:
        sa, ca = layer.self_attn, layer.encoder_attn
        layers.append(
            LayerWeights(
                qkv=fused_qkv(read_linear(sa.q_proj), read_linear(sa.k_proj), read_linear(sa.v_proj), scale),
                self_out=read_linear(sa.out_proj),
                self_norm=read_norm(layer.self_attn_layer_norm),
                cross_q=scaled_linear(read_linear(ca.q_proj), scale),
                cross_k=read_linear(ca.k_proj),
                cross_v=read_linear(ca.v_proj),
                cross_out=read_linear(ca.out_proj),
                cross_norm=read_norm(layer.encoder_attn_layer_norm),
                fc1=read_linear(layer.fc1),
                fc2=read_linear(layer.fc2),
                act=fast_act(layer.activation_fn),
                ffn_norm=read_norm(layer.final_layer_norm),
                scale=scale,
            )
        )
    return layers


def bart_family(
    stack: torch.nn.Module, lm_head: torch.nn.Module, logits_bias: torch.Tensor | None, family: str
) -> DecoderDescription:
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
    return DecoderDescription(
        family=family,
        hidden=d_model,
        heads=heads,
        head_dim=head_dim,
        pre_ln=family == "mbart",
        word_emb=stack.embed_tokens.weight,
        emb_scale=emb_scale,
        pos_emb=pos_emb,
        pos_offset=pos_offset,
        emb_norm=read_norm(getattr(stack, "layernorm_embedding", None)),
        layers=bart_layers(stack.layers, heads, head_dim),
        final_norm=read_norm(getattr(stack, "layer_norm", None)),
        lm_head=Linear(lm_head.weight, lm_head.bias),
        logits_bias=None if logits_bias is None else logits_bias.reshape(-1),
        cross_dim=stack.layers[0].encoder_attn.k_proj.weight.shape[1],
    )
