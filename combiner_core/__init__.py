"""combiner_core: build, load, save and run encoder-decoder ("combiner") models.

No Ray here: this package works alone on a laptop. Quick start:

    from combiner_core import warm_start_combiner, generate_texts, GenerationParams
    c = warm_start_combiner(encoder_uri="path/to/bert", decoder_uri="path/to/gpt2")
    print(generate_texts(c, ["some text"], GenerationParams(strategy="beam"))[0][0].text)

Names are imported on first use (PEP 562): `from combiner_core import GenerationParams`
costs only pydantic, so a job's driver, which validates specs and never runs a model,
does not pay for torch and transformers (several seconds per job start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import DecoderOptions, EncoderOptions, random_combiner, warm_start_combiner
    from .checkpoint import (
        MANIFEST_NAME,
        load_combiner,
        load_preprocessor,
        read_manifest,
        resolve_checkpoint,
        save_combiner,
        sha256_file,
    )
    from .chunking import split_windows, summarize_windows
    from .combiner import Combiner, Preprocessor, set_special_tokens, special_tokens_from_tokenizer
    from .engine import (
        FAST_FAMILIES,
        EngineStats,
        Generated,
        GenerationEngine,
        default_slots,
        hf_generate,
        resolve_dtype,
    )
    from .errors import (
        CheckpointNotFoundError,
        CombinerError,
        ImageDecodeError,
        InputError,
        ManifestMismatchError,
        MissingImageProcessorError,
        MissingTokenizerError,
        NotACombinerError,
        SpecialTokenError,
        TextInputError,
        UnsafeCheckpointError,
        UnsupportedDecoderError,
        UnsupportedEncoderError,
    )
    from .families import CROSS_ATTENTION_DECODERS
    from .generation import generate, generate_images, generate_texts
    from .labels import LabelScorer, LabelScores, LabelSet, score_labels
    from .params import GenerationParams
    from .preprocess import (
        DEFAULT_MAX_IMAGE_PIXELS,
        TokenizedText,
        collate_token_ids,
        decode_image,
        image_to_pixel_values,
        pad_sequences,
        text_from_bytes,
        tokenize_batch,
        tokenize_text,
    )
    from .vocab import build_word_tokenizer

# public name -> the submodule that defines it
_WHERE: dict[str, str] = {
    "LabelScorer": "labels",
    "LabelScores": "labels",
    "LabelSet": "labels",
    "score_labels": "labels",
    "split_windows": "chunking",
    "summarize_windows": "chunking",
    "CROSS_ATTENTION_DECODERS": "families",
    "DEFAULT_MAX_IMAGE_PIXELS": "preprocess",
    "FAST_FAMILIES": "engine",
    "MANIFEST_NAME": "checkpoint",
    "CheckpointNotFoundError": "errors",
    "Combiner": "combiner",
    "CombinerError": "errors",
    "DecoderOptions": "build",
    "EncoderOptions": "build",
    "EngineStats": "engine",
    "Generated": "engine",
    "GenerationEngine": "engine",
    "GenerationParams": "params",
    "ImageDecodeError": "errors",
    "InputError": "errors",
    "ManifestMismatchError": "errors",
    "MissingImageProcessorError": "errors",
    "MissingTokenizerError": "errors",
    "NotACombinerError": "errors",
    "Preprocessor": "combiner",
    "SpecialTokenError": "errors",
    "TextInputError": "errors",
    "TokenizedText": "preprocess",
    "UnsafeCheckpointError": "errors",
    "UnsupportedDecoderError": "errors",
    "UnsupportedEncoderError": "errors",
    "build_word_tokenizer": "vocab",
    "collate_token_ids": "preprocess",
    "decode_image": "preprocess",
    "default_slots": "engine",
    "generate": "generation",
    "generate_images": "generation",
    "generate_texts": "generation",
    "hf_generate": "engine",
    "image_to_pixel_values": "preprocess",
    "load_combiner": "checkpoint",
    "load_preprocessor": "checkpoint",
    "pad_sequences": "preprocess",
    "random_combiner": "build",
    "read_manifest": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "resolve_dtype": "engine",
    "save_combiner": "checkpoint",
    "set_special_tokens": "combiner",
    "sha256_file": "checkpoint",
    "special_tokens_from_tokenizer": "combiner",
    "text_from_bytes": "preprocess",
    "tokenize_batch": "preprocess",
    "tokenize_text": "preprocess",
    "warm_start_combiner": "build",
}

__all__ = [
    "CROSS_ATTENTION_DECODERS",
    "CheckpointNotFoundError",
    "Combiner",
    "CombinerError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DecoderOptions",
    "EncoderOptions",
    "EngineStats",
    "FAST_FAMILIES",
    "Generated",
    "GenerationEngine",
    "GenerationParams",
    "ImageDecodeError",
    "InputError",
    "LabelScorer",
    "LabelScores",
    "LabelSet",
    "MANIFEST_NAME",
    "ManifestMismatchError",
    "MissingImageProcessorError",
    "MissingTokenizerError",
    "NotACombinerError",
    "Preprocessor",
    "SpecialTokenError",
    "TextInputError",
    "TokenizedText",
    "UnsafeCheckpointError",
    "UnsupportedDecoderError",
    "UnsupportedEncoderError",
    "build_word_tokenizer",
    "collate_token_ids",
    "decode_image",
    "default_slots",
    "generate",
    "generate_images",
    "generate_texts",
    "hf_generate",
    "image_to_pixel_values",
    "load_combiner",
    "load_preprocessor",
    "pad_sequences",
    "random_combiner",
    "read_manifest",
    "resolve_checkpoint",
    "resolve_dtype",
    "save_combiner",
    "score_labels",
    "set_special_tokens",
    "sha256_file",
    "special_tokens_from_tokenizer",
    "split_windows",
    "summarize_windows",
    "text_from_bytes",
    "tokenize_batch",
    "tokenize_text",
    "warm_start_combiner",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'combiner_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
