"""The generation engine: in-flight batched greedy / beam / sampling for combiners.

    from combiner_core import GenerationEngine, GenerationParams
    engine = GenerationEngine(combiner, GenerationParams(strategy="beam"), slots=32)
    outputs = engine.generate_token_ids([ids_1d, ...], row_keys=[...])
    print(engine.stats.decoder_efficiency, engine.fast_path, engine.fallback_reason)

See core.py for how a call runs and model/description.py for the uniform decoder description.
"""

from .core import DEFAULT_ROWS, GenerationEngine, default_slots, resolve_dtype
from .model import FAST_FAMILIES, DecoderDescription, decoder_family, extract_decoder
from .outputs import EngineStats, Generated
from .reference import hf_generate

__all__ = [
    "DEFAULT_ROWS",
    "FAST_FAMILIES",
    "DecoderDescription",
    "EngineStats",
    "Generated",
    "GenerationEngine",
    "decoder_family",
    "default_slots",
    "extract_decoder",
    "hf_generate",
    "resolve_dtype",
]
