"""The generation engine: in-flight batched greedy / beam / sampling for combiners.

    from combiner_core import GenerationEngine, GenerationParams
    engine = GenerationEngine(combiner, GenerationParams(strategy="beam"), slots=32)
    outputs = engine.generate_token_ids([ids_1d, ...], row_keys=[...])
    print(engine.stats.decoder_efficiency, engine.fast_path, engine.fallback_reason)

See core.py for how a call runs and decoder.py for the uniform decoder description.
"""

from .core import DEFAULT_ROWS, EngineStats, GenerationEngine, default_slots, resolve_dtype
from .decoder import FAST_FAMILIES, DecoderSpec, decoder_family, extract_decoder

__all__ = [
    "DEFAULT_ROWS",
    "FAST_FAMILIES",
    "DecoderSpec",
    "EngineStats",
    "GenerationEngine",
    "decoder_family",
    "default_slots",
    "extract_decoder",
    "resolve_dtype",
]
