"""What one generation call does, resolved exactly as transformers' `generate` resolves it.

The generation config goes through HF's own preparation (`_prepare_generation_config`,
`_prepare_special_tokens`, `_prepare_generated_length`, `_get_logits_processor`), so the
model's generation_config.json defaults apply as they do under HF; the resulting HF
processors are mapped onto per-row ones (processors.py).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation import stopping_criteria as sc

from ...describe import max_new_tokens_limit
from ...params import GenerationParams
from ..model import decoder_family
from ..notices import warn_once
from .processors import RowProcessor, Unsupported, map_processor

log = logging.getLogger(__name__)


@dataclass
class DecodingPlan:
    """Resolved generation settings (HF's view of them after all defaults applied).

    group: decoder rows per input (num_beams for beam search, num_return_sequences
    for sampling, 1 for greedy).
    """

    mode: Literal["greedy", "sample", "beam"]
    group: int
    num_return: int
    max_new_tokens: int
    max_length: int
    start_id: int
    pad_id: int
    eos_ids: list[int]
    length_penalty: float
    early_stopping: bool | str
    processors: list[RowProcessor] = field(default_factory=list)
    seed: int | None = None

    @property
    def beams_to_keep(self) -> int:
        return max(2, 1 + len(self.eos_ids)) * self.group


# Settings _get_logits_processor cannot see without the encoder input ids (we pass none),
# or that change the decoding loop itself: the engine does not implement them.
_UNSUPPORTED_SETTINGS = (
    ("encoder_repetition_penalty", lambda v: v is not None and v != 1.0),
    ("encoder_no_repeat_ngram_size", lambda v: v is not None and v > 0),
    ("max_time", lambda v: v is not None),
    ("stop_strings", lambda v: v is not None),
    ("guidance_scale", lambda v: v is not None and v != 1),
    ("prompt_lookup_num_tokens", lambda v: v is not None),
    ("cache_implementation", lambda v: v not in (None, "dynamic")),
)


def resolve_decoding_plan(model: torch.nn.Module, config: GenerationConfig, *, seed: int | None, vocab: int) -> DecodingPlan:
    """HF's resolution of `config` for `model` (as `generate` does it), as a DecodingPlan.

    Raises Unsupported when HF would run something the engine does not implement.
    """
    device = torch.device("cpu")
    base = model.generation_config
    has_default_max_length = config.max_length is None and base.max_length is None
    has_default_min_length = config.min_length is None and base.min_length is None
    try:
        gc, _ = model._prepare_generation_config(copy.deepcopy(config))
        model._prepare_special_tokens(gc, True, device=device, batch_size=1)
        start = gc._decoder_start_token_tensor
        gc = model._prepare_generated_length(
            generation_config=gc,
            has_default_max_length=has_default_max_length,
            has_default_min_length=has_default_min_length,
            model_input_name="input_ids",
            input_ids_length=1,
            inputs_tensor=torch.zeros(1, 1, dtype=torch.long),
        )
        procs = model._get_logits_processor(
            generation_config=gc,
            input_ids_seq_length=1,
            encoder_input_ids=None,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(),
            device=device,
            model_kwargs={},
        )
        stops = model._get_stopping_criteria(gc, StoppingCriteriaList())
    except (AttributeError, TypeError) as exc:  # a transformers without these internals
        raise Unsupported(f"cannot resolve the generation config the way HF does ({exc})") from exc
    for name, bad in _UNSUPPORTED_SETTINGS:
        if bad(getattr(gc, name, None)):
            raise Unsupported(f"generation setting {name}={getattr(gc, name)!r}")
    for crit in stops:
        if not isinstance(crit, (sc.MaxLengthCriteria, sc.EosTokenCriteria)):
            raise Unsupported(f"stopping criterion {type(crit).__name__}")
    generation_mode = gc.get_generation_mode()
    mode_name = str(getattr(generation_mode, "value", generation_mode))
    modes = {"greedy_search": "greedy", "sample": "sample", "beam_search": "beam"}
    if mode_name not in modes:
        raise Unsupported(f"generation mode {mode_name}")
    mode = modes[mode_name]
    eos = gc._eos_token_tensor
    eos_ids = [] if eos is None else [int(x) for x in eos.reshape(-1).tolist()]
    pad = gc._pad_token_tensor
    processors = [map_processor(p, vocab=vocab, device=device) for p in procs]
    num_beams = int(gc.num_beams or 1)
    num_return = int(gc.num_return_sequences or 1)
    if mode == "beam" and num_return > num_beams:
        raise Unsupported("num_return_sequences > num_beams")
    if mode == "greedy" and num_return > 1:
        raise Unsupported("greedy with num_return_sequences > 1")
    return DecodingPlan(
        mode=mode,
        group=num_beams if mode == "beam" else num_return,
        num_return=num_return,
        max_new_tokens=int(gc.max_length) - 1,
        max_length=int(gc.max_length),
        start_id=int(start.reshape(-1)[0]),
        pad_id=int(pad) if pad is not None else -1,
        eos_ids=eos_ids,
        length_penalty=float(gc.length_penalty if gc.length_penalty is not None else 1.0),
        early_stopping=gc.early_stopping if gc.early_stopping is not None else False,
        processors=processors,
        seed=seed,
    )


def fit_positions(params: GenerationParams, model: torch.nn.Module) -> GenerationParams:
    """`params` with max_new_tokens lowered to what the decoder's position table holds.

    Past it the decoder would read a position it has no embedding for (an IndexError
    that took down whole batches); a row that reaches the limit ends there, as any row
    that reaches max_new_tokens does. Said once per (family, limit) in the log.
    """
    limit = max_new_tokens_limit(model.config.to_dict())
    if limit is None or params.max_new_tokens <= limit:
        return params
    family = decoder_family(model)
    warn_once(log, ("positions", family, str(limit)),
              "generation engine: max_new_tokens=%d is past the %d positions of the '%s' decoder; "
              "rows end at %d tokens", params.max_new_tokens, limit, family, limit)
    return params.model_copy(
        update={"max_new_tokens": limit, "min_new_tokens": min(params.min_new_tokens, limit)}
    )
