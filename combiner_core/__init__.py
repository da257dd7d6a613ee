"""combiner_core: build, load, save and run encoder-decoder ("combiner") models.

No Ray here: this package works alone on a laptop. Quick start:

    from combiner_core import warm_start_combiner, generate_texts, GenerationParams
    c = warm_start_combiner(encoder_uri="path/to/bert", decoder_uri="path/to/gpt2")
    print(generate_texts(c, ["some text"], GenerationParams(strategy="beam"))[0][0].text)

This face holds the names a user calls; every error raised on purpose is a
CombinerError (per-row input problems an InputError, with `stage` and `cause`). Public
modules for more: `storage` (URIs, fsspec, credentials), `describe` (what a checkpoint
is, from its JSON files), `errors`, `engine` (GenerationEngine and its rooms),
`preprocess`, `images` (image bytes to pixels, fast), `checkpoint`, `build`, `training`.

Names are imported on first use (PEP 562): `from combiner_core import GenerationParams`
costs only pydantic, so a job's driver, which validates specs and never runs a model,
does not pay for torch and transformers (several seconds per job start).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it (the one list: __all__ is its keys)
_WHERE: dict[str, str] = {
    # the model
    "Combiner": "combiner",
    "Preprocessor": "combiner",
    "warm_start_combiner": "build",
    "random_combiner": "build",
    "load_combiner": "checkpoint",
    "load_preprocessor": "checkpoint",
    "save_combiner": "checkpoint",
    # generation
    "GenerationParams": "params",
    "GenerationEngine": "engine",
    "Generated": "engine",
    "generate": "generation",
    "generate_texts": "generation",
    "generate_images": "generation",
    "resolve_dtype": "engine",
    "split_windows": "chunking",
    "summarize_windows": "chunking",
    # labels
    "LabelSet": "labels",
    "LabelScorer": "labels",
    "LabelScores": "labels",
    "score_labels": "labels",
    # inputs
    "decode_image": "preprocess",
    "encode_images": "images",
    "model_pixel_values": "images",
    "fuse_image_processor": "images",
    "FusedImageProcessor": "images",
    "image_to_pixel_values": "preprocess",
    "tokenize_text": "preprocess",
    "text_from_bytes": "preprocess",
    # errors
    "CombinerError": "errors",
    "InputError": "errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'combiner_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
