"""transformers' own `generate`: the engine's fallback and its reference for correctness.

A decoder family without a fast path (or a setting the engine does not implement) runs
this; the tests hold the engine to its outputs.
"""

from __future__ import annotations

import torch

from ..combiner import Combiner
from ..params import GenerationParams
from .outputs import Generated, trim_generated


@torch.inference_mode()
def hf_generate(
    combiner: Combiner,
    inputs: dict[str, torch.Tensor],
    params: GenerationParams | None = None,
    model: torch.nn.Module | None = None,
) -> list[list[Generated]]:
    """transformers' own `generate` on a padded batch: the engine's fallback and reference.

    model: run this model instead of the combiner's (the engine's int8 copy of it,
    quantize.quantized_copy). Same return value as `generate`.
    """
    params = params or GenerationParams()
    model = combiner.model if model is None else model
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
