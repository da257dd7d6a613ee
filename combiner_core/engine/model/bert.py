"""BERT and RoBERTa-style decoders (BertLMHeadModel, RobertaForCausalLM and its clones)."""

from __future__ import annotations

import sys

import torch

from .activations import fast_act
from .description import DecoderDescription, LayerWeights, Linear, UnsupportedFamily
from .weights import fused_qkv, read_linear, read_norm, scaled_linear


def bert_like(decoder: torch.nn.Module, family: str) -> DecoderDescription:
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
            LayerWeights(
                qkv=fused_qkv(read_linear(sa.self.query), read_linear(sa.self.key), read_linear(sa.self.value), scale),
                self_out=read_linear(sa.output.dense),
                self_norm=read_norm(sa.output.LayerNorm),
                cross_q=scaled_linear(read_linear(ca.self.query), scale),
                cross_k=read_linear(ca.self.key),
                cross_v=read_linear(ca.self.value),
                cross_out=read_linear(ca.output.dense),
                cross_norm=read_norm(ca.output.LayerNorm),
                fc1=read_linear(layer.intermediate.dense),
                fc2=read_linear(layer.output.dense),
                act=fast_act(layer.intermediate.intermediate_act_fn),
                ffn_norm=read_norm(layer.output.LayerNorm),
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
    return DecoderDescription(
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
        emb_norm=read_norm(emb.LayerNorm),
        layers=layers,
        head_dense=read_linear(dense),
        head_act=act,
        head_norm=read_norm(norm),
        lm_head=Linear(out.weight, lm_bias),
        cross_dim=layers[0].cross_k.weight.shape[1],
    )
