"""What generation returns: candidates (Generated) and an engine's counters (EngineStats).

EngineStats holds additive counters; its ratios (decoder and encoder efficiency) are
computed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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


@dataclass
class EngineStats:
    """Cumulative counters of an engine (all calls).

    Attributes:
        rows: inputs generated for.
        candidates: candidates returned (rows x num_return_sequences).
        generated_tokens: tokens in the returned candidates.
        decoder_steps: decode steps run.
        decoder_positions: decoder token-positions computed (rows per step, summed).
        active_positions: of those, positions of rows still generating.
        encoder_positions: encoder token-positions computed (padding included).
        encoder_tokens: of those, real (non-padding) input positions.
        encoder_batches: encoder forward calls.
        refills: inputs that took a slot freed by a finished input mid-call.
    """

    rows: int = 0
    candidates: int = 0
    generated_tokens: int = 0
    decoder_steps: int = 0
    decoder_positions: int = 0
    active_positions: int = 0
    encoder_positions: int = 0
    encoder_tokens: int = 0
    encoder_batches: int = 0
    refills: int = 0

    @property
    def decoder_efficiency(self) -> float:
        """Share of computed decoder positions that belonged to unfinished rows (limit 1.0)."""
        return self.active_positions / self.decoder_positions if self.decoder_positions else 1.0

    @property
    def encoder_efficiency(self) -> float:
        """Share of computed encoder positions that were not padding."""
        return self.encoder_tokens / self.encoder_positions if self.encoder_positions else 1.0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = dict(asdict(self))
        out.update(decoder_efficiency=self.decoder_efficiency, encoder_efficiency=self.encoder_efficiency)
        return out
