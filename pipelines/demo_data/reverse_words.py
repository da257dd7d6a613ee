"""A deterministic synthetic text-to-text task: reverse the order of a sentence's words.

Inputs are 4-8 words drawn from a fixed list of common English words (all whole
words in BERT's vocabulary); the target is the same words in reverse order. A
warm-started bert2bert must learn to attend across, not copy: its eval loss
starts high and falls far. No Ray here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

WORDS = (
    "red green blue yellow black white small large big little old new cat dog bird fish "
    "house tree car road river city day night sun moon water fire book door window table"
).split()
SPLIT_SEEDS = {"train": 11, "eval": 12, "heldout": 13}


def iter_reverse_examples(split: str, count: int) -> Iterator[dict[str, str]]:
    """`count` rows of {id, text, target} for `split`, deterministically."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")
    rng = random.Random(SPLIT_SEEDS[split])
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        yield {"id": f"{split}-{i:06d}", "text": " ".join(words), "target": " ".join(reversed(words))}


def write_reverse_split(path: str | Path, split: str, count: int) -> Path:
    """Write a split as one JSONL file {id, text, target} in folder `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "part-00000.jsonl"
    with target.open("w") as fh:
        for row in iter_reverse_examples(split, count):
            fh.write(json.dumps(row) + "\n")
    return target
