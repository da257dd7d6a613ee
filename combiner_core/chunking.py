"""Long inputs: windows at sentence boundaries, and summarizing the summaries.

A document longer than the encoder's limit is split into windows of whole sentences
that each fit (neighbouring windows share `overlap` sentences, so a fact cut by a
boundary is seen whole in one of them); each window is summarized, the window
summaries are joined in order and summarized again, and so on while the joined text
is still too long. Every window of every level is a row of the same engine call, so
the decoder slots stay full.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .engine.outputs import Generated

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# Levels of summaries of summaries before the joined text is cut to fit: each level
# shrinks the text several times, so 4 covers documents thousands of windows long.
MAX_LEVELS = 4


def sentences(text: str) -> list[str]:
    """Sentences of `text`: split after . ! ? followed by whitespace, and at line breaks."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def _count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def split_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, *, max_tokens: int, overlap: int = 1
) -> list[list[int]]:
    """Token ids (special tokens included) of windows of whole sentences, each <= max_tokens.

    A text that fits is one window. Windows are filled greedily; the next window starts
    `overlap` sentences before the previous one ended. A single sentence longer than a
    window is cut into token slices (the only place a window ends mid-sentence).
    """
    whole = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    if len(whole) <= max_tokens:
        return [list(whole)]
    special = len(whole) - _count(tokenizer, text)  # [CLS]/[SEP], <s>/</s>... per window
    budget = max(1, max_tokens - special)
    units: list[tuple[str, int]] = []
    for sentence in sentences(text):
        n = _count(tokenizer, sentence)
        if n <= budget:
            units.append((sentence, n))
            continue
        ids = tokenizer(sentence, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        for start in range(0, len(ids), budget):
            piece = tokenizer.decode(ids[start : start + budget])
            units.append((piece, _count(tokenizer, piece)))
    windows: list[list[int]] = []
    start = 0
    overlap = max(0, overlap)
    while start < len(units):
        end, used = start, 0
        # +1 per joint: sentences are joined with a space, which may be its own token.
        while end < len(units) and used + units[end][1] + (1 if end > start else 0) <= budget:
            used += units[end][1] + (1 if end > start else 0)
            end += 1
        end = max(end, start + 1)
        ids = tokenizer(" ".join(u[0] for u in units[start:end]), add_special_tokens=True, truncation=True,
                        max_length=max_tokens, verbose=False)["input_ids"]
        windows.append(list(ids))
        if end >= len(units):
            break
        start = max(end - overlap, start + 1)
    return windows


@dataclass(frozen=True)
class Summary:
    """A long document's summary: the final candidates and how many windows its first level had."""

    candidates: list[Generated]
    windows: int
    levels: int


def summarize_windows(
    generate: Callable[[list[list[int]], list[str]], list[list[Generated]]],
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[list[list[int]]],
    keys: Sequence[str],
    *,
    max_tokens: int,
    overlap: int = 1,
) -> list[Summary]:
    """Summaries of rows given as their first-level windows (see split_windows).

    `generate(token_id_lists, row_keys)` runs the model on many inputs at once (the
    engine); it is called once per level with every window of every unfinished row.
    A row of one window is done after the first call. A row of several windows gets
    its window summaries joined in order, split again (without overlap) if still too
    long, and summarized again, up to MAX_LEVELS; then the joined text is cut to fit.
    """
    pending = {i: list(windows) for i, windows in enumerate(rows)}
    first = {i: len(w) for i, w in enumerate(rows)}
    levels = dict.fromkeys(pending, 0)
    done: dict[int, list[Generated]] = {}
    while pending:
        flat: list[list[int]] = []
        owner: list[int] = []
        flat_keys: list[str] = []
        for i, windows in pending.items():
            for w, ids in enumerate(windows):
                flat.append(ids)
                owner.append(i)
                # Sampling draws depend on the key: each window of each level has its own.
                flat_keys.append(f"{keys[i]}#L{levels[i]}w{w}" if len(windows) > 1 or levels[i] else keys[i])
        results = generate(flat, flat_keys)
        by_row: dict[int, list[list[Generated]]] = {}
        for i, cands in zip(owner, results, strict=True):
            by_row.setdefault(i, []).append(cands)
        next_pending = {}
        for i, outs in by_row.items():
            levels[i] += 1
            if len(outs) == 1:
                done[i] = outs[0]
                continue
            joined = " ".join(o[0].text for o in outs)
            if levels[i] >= MAX_LEVELS:
                ids = tokenizer(joined, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
                next_pending[i] = [list(ids)]
            else:
                # No overlap above the first level: window summaries are whole sentences
                # already, and repeating one would only make the next level longer.
                next_pending[i] = split_windows(tokenizer, joined, max_tokens=max_tokens, overlap=0)
        pending = next_pending
    return [Summary(candidates=done[i], windows=first[i], levels=levels[i]) for i in range(len(rows))]
