"""Batched generation: greedy, beam search and sampling.

`generate` runs the generation engine (combiner_core.engine: in-flight batching,
length-bucketed encoder, shared cross-attention K/V, preallocated KV cache), which
gives the outputs of transformers' `generate` (the reference for correctness, kept
here as `hf_generate`) faster. Every call returns, per input row,
`num_return_sequences` candidates with text, token ids, a score and token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .combiner import Combiner
from .params import GenerationParams
from .preprocess import decode_image, image_to_pixel_values, tokenize_batch


@dataclass(frozen=True)
class Generated:
    """One generated candidate.

    Attributes:
        text: decoded text, special tokens removed.
        token_ids: generated ids, without the decoder start token and padding.
        score: mean log-probability per generated token for greedy/sampling;
            for beam search, the beam score (sum of log-probs / length**length_penalty),
            which is the same quantity when length_penalty is 1.
        num_tokens: len(token_ids).
    """

    text: str
    token_ids: tuple[int, ...]
    score: float
    num_tokens: int


def trim_generated(ids: list[int], *, pad: int, eos: set[int]) -> list[int]:
    """Cut a generated row at its first eos (kept) and drop padding after it."""
    out = []
    for token in ids:
        out.append(token)
        if token in eos:
            break
    while out and out[-1] == pad and pad not in eos:
        out.pop()
    return out


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
    from .engine import GenerationEngine  # the engine imports this module

    engine = GenerationEngine(combiner, params, dtype=None)
    if "pixel_values" in inputs:
        return engine.generate_pixels(inputs["pixel_values"], row_keys)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    rows = [ids[i] if mask is None else ids[i][mask[i].bool()] for i in range(ids.shape[0])]
    return engine.generate_token_ids(rows, row_keys)


@torch.inference_mode()
def hf_generate(
    combiner: Combiner, inputs: dict[str, torch.Tensor], params: GenerationParams | None = None
) -> list[list[Generated]]:
    """transformers' own `generate` on a padded batch: the engine's fallback and reference.

    Same return value as `generate`.
    """
    params = params or GenerationParams()
    model = combiner.model
    device = model.device
    batch = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    config = params.to_generation_config(model.generation_config)
    if params.seed is not None:
        torch.manual_seed(params.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(params.seed)
    out = model.generate(**batch, generation_config=config)
    sequences = out.sequences
    # Encoder-decoder sequences start with decoder_start_token_id; drop it.
    generated = sequences[:, 1:]
    if params.strategy == "beam":
        scores = out.sequences_scores.float().tolist()
    else:
        transition = model.compute_transition_scores(sequences, out.scores, normalize_logits=True)
        scores = []
    ids = combiner.special_token_ids()
    eos = config.eos_token_id
    eos_set = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for i in range(generated.shape[0]):
        tokens = trim_generated(generated[i].tolist(), pad=ids["pad_token_id"], eos=eos_set)
        if params.strategy != "beam":
            steps = transition[i, : len(tokens)].float()
            steps = steps[torch.isfinite(steps)]
            score = float(steps.mean()) if len(steps) else 0.0
        else:
            score = scores[i]
        text = combiner.decoder_tokenizer.decode(tokens, skip_special_tokens=True).strip()
        rows.append(Generated(text=text, token_ids=tuple(tokens), score=score, num_tokens=len(tokens)))
    n = params.num_return_sequences
    return [rows[i * n : (i + 1) * n] for i in range(len(rows) // n)]


def generate_texts(
    combiner: Combiner,
    texts: Sequence[str],
    params: GenerationParams | None = None,
    *,
    truncation: bool = True,
) -> list[list[Generated]]:
    """Tokenize, pad and generate for a list of texts (raises on a bad text)."""
    if combiner.tokenizer is None:
        raise ValueError(f"this combiner takes images ({combiner.layout}); use generate_images")
    batch, _ = tokenize_batch(
        combiner.tokenizer, texts, max_tokens=combiner.max_input_tokens, truncation=truncation
    )
    return generate(combiner, batch, params)


def generate_images(
    combiner: Combiner, images: Sequence[bytes], params: GenerationParams | None = None
) -> list[list[Generated]]:
    """Decode, preprocess and generate for a list of encoded images (raises on a bad image)."""
    if combiner.image_processor is None:
        raise ValueError(f"this combiner takes text ({combiner.layout}); use generate_texts")
    pixels = image_to_pixel_values(combiner.image_processor, [decode_image(b) for b in images])
    return generate(combiner, {"pixel_values": pixels}, params)
