"""TrOCR decoders (learned or sinusoidal positions)."""

from __future__ import annotations

import torch

from .bart import bart_layers
from .description import DecoderDescription, Linear
from .weights import read_norm


def trocr(decoder: torch.nn.Module) -> DecoderDescription:
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
    return DecoderDescription(
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
        emb_norm=read_norm(stack.layernorm_embedding),
        layers=bart_layers(stack.layers, heads, head_dim),
        lm_head=Linear(decoder.output_projection.weight, decoder.output_projection.bias),
        cross_dim=stack.layers[0].encoder_attn.k_proj.weight.shape[1],
    )
