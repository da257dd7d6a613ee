"""GPT-2 as a decoder (GPT2LMHeadModel with add_cross_attention)."""

from __future__ import annotations

import torch

from .activations import fast_act
from .description import DecoderDescription, LayerWeights, Linear
from .weights import read_conv1d, read_norm, scaled_linear


def gpt2(decoder: torch.nn.Module) -> DecoderDescription:
    config = decoder.config
    tr = decoder.transformer
    heads = config.n_head
    head_dim = config.n_embd // heads
    layers = []
    for block in tr.h:
        attn, cross = block.attn, block.crossattention
        scale = attn.scaling  # 1/sqrt(d) and, when configured, 1/(layer_idx+1)
        c_attn = read_conv1d(attn.c_attn)  # already fused q|k|v, [3D, D] view
        d = config.n_embd
        qkv = Linear(
            torch.cat([c_attn.weight[:d] * scale, c_attn.weight[d:]], dim=0),
            torch.cat([c_attn.bias[:d] * scale, c_attn.bias[d:]], dim=0),
        )
        kv = read_conv1d(cross.c_attn)
        layers.append(
            LayerWeights(
                qkv=qkv,
                self_out=read_conv1d(attn.c_proj),
                self_norm=read_norm(block.ln_1),
                cross_q=scaled_linear(read_conv1d(cross.q_attn), cross.scaling),
                cross_k=Linear(kv.weight[:d], kv.bias[:d]),
                cross_v=Linear(kv.weight[d:], kv.bias[d:]),
                cross_out=read_conv1d(cross.c_proj),
                cross_norm=read_norm(block.ln_cross_attn),
                fc1=read_conv1d(block.mlp.c_fc),
                fc2=read_conv1d(block.mlp.c_proj),
                act=fast_act(block.mlp.act),
                ffn_norm=read_norm(block.ln_2),
                scale=scale,
            )
        )
    return DecoderDescription(
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
        final_norm=read_norm(tr.ln_f),
        lm_head=Linear(decoder.lm_head.weight, decoder.lm_head.bias),
        cross_dim=layers[0].cross_k.weight.shape[1],
    )
