"""What to generate, resolved exactly as transformers' `generate` resolves it, and the
per-row logits processing and sampling the engine runs.

The generation config goes through HF's own preparation (`_prepare_generation_config`,
`_prepare_special_tokens`, `_prepare_generated_length`, `_get_logits_processor`), so the
model's generation_config.json defaults apply as they do under HF. The resulting list
of HF processors is then mapped one by one onto engine versions: processors that read
the current length or the generated history are re-implemented per row (in-flight
rows have different lengths), and row-independent warpers (temperature, top-k, top-p)
are HF's own objects, called as is. Anything else is reported as unsupported so the
caller can fall back to HF `generate`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation import logits_process as lp
from transformers.generation import stopping_criteria as sc

NEG_INF = -math.inf


class Unsupported(Exception):
    """A generation setting the engine does not implement (the caller falls back to HF)."""


# --------------------------------------------------------------------------- processors


class RowProcessor:
    """Processes scores [rows, vocab] given each row's history and length.

    hist: [rows, T+1] token history, position 0 = decoder start token; entries at
    or beyond cur_len are stale and must be ignored. cur_len: [rows] tokens in the
    history (HF's input_ids.shape[-1] for that row).
    """

    needs_history = False

    def __call__(self, hist: torch.Tensor, cur_len: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _eos_mask(eos: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.isin(torch.arange(vocab, device=eos.device), eos)


class MinLength(RowProcessor):
    """HF MinLengthLogitsProcessor / MinNewTokensLengthLogitsProcessor, per row."""

    def __init__(self, min_length: int, eos: torch.Tensor, vocab: int) -> None:
        self.min_length = min_length
        self.eos_mask = _eos_mask(eos, vocab)

    def __call__(self, hist, cur_len, scores):
        ban = (cur_len < self.min_length)[:, None] & self.eos_mask[None, :]
        return scores.masked_fill(ban, NEG_INF)


class ForcedToken(RowProcessor):
    """HF ForcedBOSTokenLogitsProcessor (at length 1) / ForcedEOSTokenLogitsProcessor (at max_length - 1)."""

    def __init__(self, at_length: int, token: torch.Tensor) -> None:
        self.at_length = at_length
        self.token = token.reshape(-1)

    def __call__(self, hist, cur_len, scores):
        rows = cur_len == self.at_length
        forced = torch.full_like(scores, NEG_INF)
        forced[:, self.token] = 0
        return torch.where(rows[:, None], forced, scores)


class BadTokens(RowProcessor):
    """HF NoBadWordsLogitsProcessor when every bad word is a single token: a fixed mask."""

    def __init__(self, tokens: list[int], vocab: int, device: torch.device) -> None:
        self.mask = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.mask[torch.tensor(tokens, device=device)] = True

    def __call__(self, hist, cur_len, scores):
        return scores.masked_fill(self.mask, NEG_INF)


class RepetitionPenalty(RowProcessor):
    """HF RepetitionPenaltyLogitsProcessor (2-D path) over each row's valid history."""

    needs_history = True

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, hist, cur_len, scores):
        vocab = scores.shape[-1]
        positions = torch.arange(hist.shape[1], device=hist.device)
        # Stale entries point at a spare column past the vocab, as HF does for ignored prompt tokens.
        ids = hist.masked_fill(positions[None, :] >= cur_len[:, None], vocab).clamp(max=vocab)
        padded = torch.nn.functional.pad(scores, (0, 1))
        score = torch.gather(padded, 1, ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return padded.scatter(1, ids, score)[:, :vocab]


class NoRepeatNGram(RowProcessor):
    """HF NoRepeatNGramLogitsProcessor with a per-row length."""

    needs_history = True

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, hist, cur_len, scores):
        n = self.n
        width = hist.shape[1]
        if width < n:
            return scores
        vocab = scores.shape[-1]
        windows = hist.unfold(1, n, 1)  # [rows, W, n], window w covers w .. w+n-1
        starts = torch.arange(windows.shape[1], device=hist.device)
        # The row's suffix of n-1 tokens: positions cur_len-n+1 .. cur_len-1.
        offs = torch.arange(n - 1, device=hist.device)
        idx = (cur_len[:, None] - (n - 1) + offs[None, :]).clamp(min=0)
        prefix = torch.gather(hist, 1, idx)
        matches = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)
        # Only complete n-grams inside the row's history count (window end <= cur_len - 1).
        matches &= starts[None, :] + n <= cur_len[:, None]
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class Warper(RowProcessor):
    """An HF processor whose output depends on the scores only (temperature, top-k, top-p...)."""

    def __init__(self, hf: lp.LogitsProcessor) -> None:
        self.hf = hf

    def __call__(self, hist, cur_len, scores):
        return self.hf(hist, scores)


# Processors that read neither input_ids nor its length: HF's objects are called as is.
_ROW_INDEPENDENT = (
    lp.TemperatureLogitsWarper,
    lp.TopKLogitsWarper,
    lp.TopPLogitsWarper,
    lp.MinPLogitsWarper,
    lp.TypicalLogitsWarper,
    lp.EpsilonLogitsWarper,
    lp.EtaLogitsWarper,
    lp.InfNanRemoveLogitsProcessor,
    lp.LogitNormalization,
    lp.SuppressTokensLogitsProcessor,
)


def map_processor(proc: lp.LogitsProcessor, *, vocab: int, device: torch.device) -> RowProcessor:
    """The engine version of one HF logits processor (raises Unsupported)."""
    if isinstance(proc, lp.RepetitionPenaltyLogitsProcessor):
        if proc.prompt_ignore_length is not None:
            raise Unsupported("repetition penalty with a decoder prompt mask")
        return RepetitionPenalty(float(proc.penalty))
    if isinstance(proc, lp.NoRepeatNGramLogitsProcessor):
        return NoRepeatNGram(int(proc.ngram_size))
    if isinstance(proc, lp.MinNewTokensLengthLogitsProcessor):
        return MinLength(int(proc.prompt_length_to_skip + proc.min_new_tokens), _ids(proc.eos_token_id, device), vocab)
    if isinstance(proc, lp.MinLengthLogitsProcessor):
        return MinLength(int(proc.min_length), _ids(proc.eos_token_id, device), vocab)
    if isinstance(proc, lp.ForcedBOSTokenLogitsProcessor):
        return ForcedToken(1, _ids(proc.bos_token_id, device))
    if isinstance(proc, lp.ForcedEOSTokenLogitsProcessor):
        return ForcedToken(int(proc.max_length) - 1, _ids(proc.eos_token_id, device))
    if isinstance(proc, lp.NoBadWordsLogitsProcessor):
        words = proc.bad_word_ids
        if all(len(w) == 1 for w in words):
            return BadTokens([w[0] for w in words], vocab, device)
        raise Unsupported("bad_words_ids with multi-token words")
    if type(proc) in _ROW_INDEPENDENT:
        return Warper(proc)
    raise Unsupported(f"logits processor {type(proc).__name__}")


def _ids(value, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.long).reshape(-1)
    if isinstance(value, int):
        value = [value]
    return torch.tensor(list(value), dtype=torch.long, device=device)


def apply(processors: list[RowProcessor], hist, cur_len, scores) -> torch.Tensor:
    for proc in processors:
        scores = proc(hist, cur_len, scores)
    return scores


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
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


def resolve_plan(model: torch.nn.Module, config: GenerationConfig, *, seed: int | None, vocab: int) -> Plan:
    """HF's resolution of `config` for `model` (as `generate` does it), as a Plan.

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
    return Plan(
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


def processors_to(processors: list[RowProcessor], device: torch.device) -> list[RowProcessor]:
    """Move the processors' fixed tensors to the engine's device."""
    for proc in processors:
        for name in ("eos_mask", "token", "mask"):
            value = getattr(proc, name, None)
            if isinstance(value, torch.Tensor):
                setattr(proc, name, value.to(device))
    return processors


# --------------------------------------------------------------------------- sampling

_M32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' integer hash) on uint32 values held in int64.

    int64 products wrap modulo 2**64 (two's complement), so the low 32 bits are the
    uint32 product; masking keeps every value in [0, 2**32) and shifts logical.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def row_stream_key(seed: int, row_key: object, sample_index: int) -> int:
    """A 32-bit stream id for (seed, row key, which of the row's samples); stable across
    processes and Python versions (blake2b, not hash())."""
    if isinstance(row_key, bytes):
        raw = row_key
    elif isinstance(row_key, str):
        raw = b"s" + row_key.encode()
    else:
        raw = b"i" + str(int(row_key)).encode()
    digest = hashlib.blake2b(raw + b"|" + str(seed).encode() + b"|" + str(sample_index).encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


class GumbelSampler:
    """Counter-based Gumbel-max sampling: token = argmax(log p + G), with G drawn from
    hash(row stream, step, token index). The draw for a row depends on nothing but
    (seed, row key, sample index, step), so a row samples the same tokens whatever
    the batch, the slot or the order it runs in."""

    def __init__(self, vocab: int, device: torch.device) -> None:
        ids = torch.arange(vocab, dtype=torch.long, device=device)
        self.token_hash = mix32((ids * 0x9E3779B9 + 0x632BE5AB) & _M32)

    def gumbel(self, stream: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Gumbel noise [rows, vocab] for rows' stream ids and their step numbers."""
        h = mix32(stream ^ mix32((step * 0x85EBCA77 + 0x165667B1) & _M32))
        bits = mix32(h[:, None] ^ self.token_hash[None, :])
        # 24 random bits -> u in (0, 1), never 0 or 1: the log-logs stay finite.
        u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        return -torch.log(-torch.log(u))
