"""ModelCounters: the model stage's work counters, one typed record from the actor to the summary.

A model actor takes the difference of its engine's (or label scorer's) cumulative
counters over each batch; it rides to the driver with the batch's rows (as JSON on the
batch's first row: Ray Data moves rows, not side records), the committer adds a shard's
up for its manifest, and the summary adds the run's up and derives the efficiencies.
Every sum is `+` on this record, and the ratios are computed in `as_stats` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelCounters:
    """Additive counters of the model stage over some rows (zero: no such work).

    Attributes:
        generated_tokens: tokens in the returned candidates (generation).
        decoder_positions: decoder token-positions computed (rows per step, summed).
        decoder_useful_positions: of those, positions of rows still generating.
        encoder_positions: encoder token-positions computed (padding included).
        encoder_useful_positions: of those, real (non-padding) input positions.
        refills: inputs that took a slot freed by a finished input mid-call.
        scored_rows: inputs the label scorer scored.
        encoder_runs: inputs the label scorer encoded.
        label_decoder_positions: label-trie positions the scorer's decoder computed.
    """

    generated_tokens: int = 0
    decoder_positions: int = 0
    decoder_useful_positions: int = 0
    encoder_positions: int = 0
    encoder_useful_positions: int = 0
    refills: int = 0
    scored_rows: int = 0
    encoder_runs: int = 0
    label_decoder_positions: int = 0

    @classmethod
    def of_engine(cls, stats: Any) -> ModelCounters:
        """From a GenerationEngine's EngineStats (cumulative)."""
        return cls(
            generated_tokens=stats.generated_tokens, decoder_positions=stats.decoder_positions,
            decoder_useful_positions=stats.active_positions, encoder_positions=stats.encoder_positions,
            encoder_useful_positions=stats.encoder_tokens, refills=stats.refills,
        )

    @classmethod
    def of_scorer(cls, stats: Any) -> ModelCounters:
        """From a LabelScorer's ScorerStats (cumulative)."""
        return cls(scored_rows=stats.rows, encoder_runs=stats.encoder_runs,
                   label_decoder_positions=stats.decoder_positions)

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def total(cls, items: Iterable[ModelCounters]) -> ModelCounters:
        out = cls()
        for item in items:
            out = out + item
        return out

    def to_json(self) -> str:
        """The non-zero counters as JSON ("" when there are none): the batch's column value."""
        return json.dumps({k: v for k, v in asdict(self).items() if v}) if self else ""

    @classmethod
    def from_json(cls, text: str | None) -> ModelCounters:
        return cls(**{k: int(v) for k, v in json.loads(text).items()}) if text else cls()

    def as_dict(self) -> dict[str, int]:
        """The non-zero counters (a manifest's `stats`)."""
        return {k: v for k, v in asdict(self).items() if v}

    def as_stats(self) -> dict[str, float]:
        """The summary's `stats`: the counters, and the efficiencies where their positions were counted."""
        out: dict[str, float] = {k: float(v) for k, v in self.as_dict().items()}
        for name in ("decoder", "encoder"):
            total, useful = getattr(self, f"{name}_positions"), getattr(self, f"{name}_useful_positions")
            if total:
                out[f"{name}_efficiency"] = round(useful / total, 4)
        return out
