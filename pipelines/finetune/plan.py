"""A fine-tuning job resolved on the driver: the plan the trainer runs from.

As a generation job's spec becomes a JobPlan, a FinetuneSpec becomes a FinetunePlan in
`preflight`: paths absolute (workers resolve nothing), every split's input listed and
grouped into shards once, its rows counted where the format tells without reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..reading import ReaderOptions, Shard
from .spec import FinetuneSpec


@dataclass(frozen=True)
class PairsPlan:
    """One split's (input, target) pairs: where and how to read them.

    Attributes:
        key: the spec key it came from (data.train, data.eval, data.test), named in errors.
        shards: its input files, grouped into read tasks.
        reader: how the reading layer turns a shard into rows.
        rows: rows known without reading (Parquet footers, one per image file), capped by
            max_rows; None for JSON lines and text (only a read counts them).
        max_rows: the spec's cap on rows read, if any.
    """

    key: str
    shards: tuple[Shard, ...]
    reader: ReaderOptions
    rows: int | None
    max_rows: int | None


@dataclass(frozen=True)
class FinetunePlan:
    """Everything a fine-tuning run needs, resolved on the driver.

    Attributes:
        spec: the validated spec, its paths absolute (the training loop reads it).
        splits: "train", "eval" and, when set, "test" -> their PairsPlan.
    """

    spec: FinetuneSpec
    splits: Mapping[str, PairsPlan]
