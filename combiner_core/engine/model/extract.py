"""Which family a combiner's decoder is, and its description (or why it has none)."""

from __future__ import annotations

import torch

from .bart import bart_family
from .bert import bert_like
from .description import DecoderDescription, UnsupportedFamily
from .gpt2 import gpt2
from .t5 import T5_LIKE, t5_family
from .trocr import trocr

ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")
BART_LIKE = ("bart", "mbart", "marian")
FAST_FAMILIES: tuple[str, ...] = ("bert", *ROBERTA_LIKE, "gpt2", "trocr", *BART_LIKE, *T5_LIKE)


def decoder_family(model: torch.nn.Module) -> str:
    """The model_type of a combiner's decoder (the model's own for native seq2seq)."""
    if is_composite(model):
        return str(model.config.decoder.model_type)
    return str(model.config.model_type)


def is_composite(model: torch.nn.Module) -> bool:
    """EncoderDecoderModel / VisionEncoderDecoderModel (two checkpoints joined), not native seq2seq."""
    return type(model).__name__ in ("EncoderDecoderModel", "VisionEncoderDecoderModel")


def extract_decoder(model: torch.nn.Module) -> DecoderDescription:
    """Fill a DecoderDescription from a combiner's model, or raise UnsupportedFamily saying why."""
    family = decoder_family(model)
    if family not in FAST_FAMILIES:
        raise UnsupportedFamily(f"decoder family '{family}' has no fast path (fast: {', '.join(FAST_FAMILIES)})")
    native = not is_composite(model)
    try:
        if native:
            if family in T5_LIKE:
                return t5_family(model, family)
            if family not in BART_LIKE:
                raise UnsupportedFamily(f"native seq2seq family '{family}' has no fast path")
            stack = model.get_decoder() if hasattr(model, "get_decoder") else model.model.decoder
            return bart_family(stack, model.lm_head, getattr(model, "final_logits_bias", None), family)
        if family in T5_LIKE:  # T5 stacks are no *ForCausalLM: a composite cannot hold one as its decoder
            raise UnsupportedFamily(f"'{family}' as the decoder of a composite combiner")
        decoder = model.decoder
        if family == "bert" or family in ROBERTA_LIKE:
            return bert_like(decoder, "bert" if family == "bert" else "roberta")
        if family == "gpt2":
            return gpt2(decoder)
        if family == "trocr":
            return trocr(decoder)
        return bart_family(decoder.model.decoder, decoder.lm_head, None, family)
    except UnsupportedFamily:
        raise
    except (AttributeError, IndexError, TypeError) as exc:
        # A checkpoint whose module layout differs from the installed transformers' one.
        raise UnsupportedFamily(f"decoder family '{family}': unexpected module layout ({exc})") from exc
