"""What the decoding steps of an engine share: the per-slot state beside the runner's
buffers (rows = slots x group), and the plan's constants on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..model import DecoderRunner
from .plan import DecodingPlan
from .sampling import GumbelSampler


class DecodeState:
    """Per-row token history, log-probs and ends; for beam search, each slot's running
    and finished beams and the origin stamps of cached columns."""

    def __init__(self, slots: int, group: int, T: int, age: torch.Tensor, beam: bool) -> None:
        rows = slots * group
        device = age.device
        long = dict(dtype=torch.long, device=device)
        self.hist = torch.zeros(rows, T + 1, **long)  # token history, [:, 0] = start token
        self.age = age  # the runner's: position of each row's next input token (moved with the runner's buffers)
        self.row_len = torch.zeros(rows, **long)  # tokens generated when the row finished
        self.row_done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.step_logp = torch.zeros(rows, T, dtype=torch.float32, device=device)
        self.stream = torch.zeros(rows, **long)  # sampling stream ids
        self.beam = beam
        if beam:
            f32 = dict(dtype=torch.float32, device=device)
            self.run_scores = torch.zeros(slots, group, **f32)
            self.fin_seq = torch.zeros(slots, group, T + 1, **long)
            self.fin_scores = torch.zeros(slots, group, **f32)
            self.fin_flag = torch.zeros(slots, group, dtype=torch.bool, device=device)
            self.fin_len = torch.zeros(slots, group, **long)
            self.heur = torch.ones(slots, dtype=torch.bool, device=device)
            # Which computation produced each cached K|V column: a stamp unique to (step,
            # row), carried along when a column is copied. Beams whose columns carry the same
            # stamps hold the same bits there, so a reorder copies only the columns whose
            # stamps differ (beams of an input mostly share all but their last few columns).
            self.origin = torch.zeros(rows, T, **long)
            self.row_ids = torch.arange(rows, device=device)
            self.columns = torch.arange(T, device=device)
            self.stamp = 0
        self.slots, self.group = slots, group

    def slot_tensors(self) -> list[torch.Tensor]:
        """Every tensor with a slot's rows, viewed [slots, group, ...] (compaction moves them)."""
        S, G = self.slots, self.group
        views = [t.view(S, G, *t.shape[1:]) for t in (self.hist, self.row_len, self.row_done, self.step_logp, self.stream)]
        if self.beam:
            views += [self.run_scores, self.fin_seq, self.fin_scores, self.fin_flag, self.fin_len, self.heur]
            views.append(self.origin.view(S, G, -1))
        return views


@dataclass
class Decoding:
    """The plan, the state and the runner one engine's steps work on, with the plan's
    constants on the device.

    Attributes:
        eos: the eos ids.
        denom: float32(length ** length_penalty) by length, the divisor HF applies to
            beam scores as a Python float.
        sampler: Gumbel sampling (strategy=sample), else None.
        pick: native_step.cpp's greedy_pick, when greedy search runs without logits
            processors on the native step (one call instead of ~12 ops a step).
        top_mask: beam search: which of the beams_to_keep candidates of a step may
            finish (the first num_beams, as HF).
        self_w: the self-attention columns the current step reads (beam reorders
            move columns within them).
    """

    plan: DecodingPlan
    state: DecodeState
    runner: DecoderRunner
    eos: torch.Tensor
    denom: torch.Tensor
    sampler: GumbelSampler | None = None
    pick: Callable[..., Any] | None = None
    top_mask: torch.Tensor | None = None
    self_w: int = 0
