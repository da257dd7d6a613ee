"""HF's logits processors, re-done per row for rows at different lengths.

Processors that read the current length or the generated history are re-implemented
per row (in-flight rows have different lengths); row-independent warpers (temperature,
top-k, top-p) are HF's own objects, called as is. Anything else is Unsupported, so the
engine falls back to HF `generate`.
"""

from __future__ import annotations

import math

import torch
from transformers.generation import logits_process as lp

NEG_INF = -math.inf


class Unsupported(Exception):
    """A generation setting the engine does not implement (the caller falls back to HF)."""


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


def processors_to(processors: list[RowProcessor], device: torch.device) -> list[RowProcessor]:
    """Move the processors' fixed tensors to the engine's device."""
    for proc in processors:
        for name in ("eos_mask", "token", "mask"):
            value = getattr(proc, name, None)
            if isinstance(value, torch.Tensor):
                setattr(proc, name, value.to(device))
    return processors
