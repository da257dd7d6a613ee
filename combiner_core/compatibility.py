"""Which checkpoints can be an encoder, which a decoder, and which are native seq2seq."""

from __future__ import annotations

import inspect

from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_MAPPING,
)

from .errors import UnsupportedDecoderError, UnsupportedEncoderError

# Decoder families whose causal-LM class takes `encoder_hidden_states` and builds
# cross-attention layers when `add_cross_attention=True`. Listed in error messages;
# tests/core/test_errors.py checks every entry against the installed transformers.
CROSS_ATTENTION_DECODERS: tuple[str, ...] = (
    "bert",
    "bert-generation",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "ernie",
    "gpt2",
    "trocr",
    "bart",
    "mbart",
    "marian",
    "pegasus",
    "blenderbot",
)


def decoder_class(config: PretrainedConfig) -> type:
    """The causal-LM class for a decoder config, refusing ones that cannot cross-attend."""
    model_type = getattr(config, "model_type", type(config).__name__)
    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        cls = None
    if cls is None or "encoder_hidden_states" not in inspect.signature(cls.forward).parameters:
        what = "has no causal-LM head" if cls is None else f"({cls.__name__}) has no cross-attention"
        raise UnsupportedDecoderError(
            f"decoder model_type '{model_type}' {what}, so it cannot attend to an encoder. "
            f"Use a decoder from a family that can: {', '.join(CROSS_ATTENTION_DECODERS)}; "
            "or load a native seq2seq checkpoint (BART, T5, Marian) with load_combiner."
        )
    return cls


def encoder_class(config: PretrainedConfig) -> type:
    """The base-model class of an encoder config."""
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError as exc:
        raise UnsupportedEncoderError(
            f"encoder model_type '{getattr(config, 'model_type', '?')}' has no base model class "
            "in transformers; use a text encoder (BERT, RoBERTa, MiniLM...) or a vision encoder "
            "(ViT, DeiT, Swin, BEiT)."
        ) from exc


def is_vision_encoder(config: PretrainedConfig) -> bool:
    """True when the encoder takes pixel_values (ViT, DeiT, Swin, BEiT...)."""
    return getattr(encoder_class(config), "main_input_name", "input_ids") == "pixel_values"
