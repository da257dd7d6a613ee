"""The decoder side of the engine: a uniform description of a cross-attending decoder
(description.py), filled per family (bert.py, gpt2.py, bart.py, trocr.py, t5.py; extract.py picks),
and one generic decode step over it (runner.py; on CPU in float32 the native step,
native.py and native_step.cpp).
"""

from .activations import fast_act, gelu_tanh
from .description import DecoderDescription, LayerWeights, Linear, Norm, UnsupportedFamily
from .extract import (
    BART_LIKE,
    FAST_FAMILIES,
    ROBERTA_LIKE,
    T5_LIKE,
    decoder_family,
    extract_decoder,
    is_composite,
)
from .native import load_native, native_error
from .runner import DecoderRunner

__all__ = [
    "BART_LIKE",
    "FAST_FAMILIES",
    "ROBERTA_LIKE",
    "T5_LIKE",
    "DecoderRunner",
    "DecoderDescription",
    "LayerWeights",
    "Linear",
    "Norm",
    "UnsupportedFamily",
    "decoder_family",
    "extract_decoder",
    "fast_act",
    "gelu_tanh",
    "is_composite",
    "load_native",
    "native_error",
]
