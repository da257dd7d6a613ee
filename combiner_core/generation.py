"""Batched generation: greedy, beam search and sampling.

`generate` runs the generation engine (combiner_core.engine: in-flight batching,
length-bucketed encoder, shared cross-attention K/V, preallocated KV cache), which
gives the outputs of transformers' `generate` (the reference for correctness:
combiner_core.engine.reference.hf_generate) faster. Every call returns, per input row,
`num_return_sequences` candidates with text, token ids, a score and token counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .combiner import Combiner
from .engine import GenerationEngine
from .engine.outputs import Generated
from .errors import ModalityError
from .images import encode_images, model_pixel_values
from .params import GenerationParams
from .preprocess import tokenize_batch


@torch.inference_mode()
def generate(
    combiner: Combiner,
    inputs: dict[str, torch.Tensor],
    params: GenerationParams | None = None,
    *,
    row_keys: Sequence[object] | None = None,
) -> list[list[Generated]]:
    """Generate for a prepared batch (input_ids/attention_mask, or pixel_values).

    Returns one list per input row, each with `params.num_return_sequences`
    candidates, best first for beam search. Runs the generation engine in the
    model's own dtype; padded rows are unpadded with attention_mask first.

    row_keys: a stable key per row (e.g. its id): sampling then depends only on
    (seed, key), whatever the batch. Default: the row's position in `inputs`.
    """
    engine = GenerationEngine(combiner, params, dtype=None)
    if "pixel_values" in inputs:
        return engine.generate_pixels(inputs["pixel_values"], row_keys)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    rows = [ids[i] if mask is None else ids[i][mask[i].bool()] for i in range(ids.shape[0])]
    return engine.generate_token_ids(rows, row_keys)


def generate_texts(
    combiner: Combiner,
    texts: Sequence[str],
    params: GenerationParams | None = None,
    *,
    truncation: bool = True,
) -> list[list[Generated]]:
    """Tokenize, pad and generate for a list of texts (raises on a bad text)."""
    if combiner.tokenizer is None:
        raise ModalityError(f"this combiner takes images ({combiner.layout}); use generate_images")
    batch, _ = tokenize_batch(
        combiner.tokenizer, texts, max_tokens=combiner.max_input_tokens, truncation=truncation
    )
    return generate(combiner, batch, params)


def generate_images(
    combiner: Combiner, images: Sequence[bytes], params: GenerationParams | None = None
) -> list[list[Generated]]:
    """Decode, preprocess and generate for a list of encoded images (raises on a bad image).

    Preprocessing is combiner_core.images' fused path where it covers the checkpoint's
    image processor (JPEGs decoded at a reduced scale), else the processor itself.
    """
    if combiner.image_processor is None:
        raise ModalityError(f"this combiner takes text ({combiner.layout}); use generate_texts")
    encoded = encode_images(combiner.image_processor, list(images))
    pixels = model_pixel_values(combiner.image_processor, encoded, device=combiner.model.device)
    return generate(combiner, {"pixel_values": pixels}, params)
