"""Decoder slots: which input each holds, filling freed slots with the next encoded
inputs at once (in-flight batching), and compacting the active slots to a prefix when
nothing is left to fill them with (so no finished row is computed)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .decoding import Decoding, row_stream_key


@dataclass
class CrossBatch:
    """One encoder batch ready for the decoder: cross-attention K|V per layer
    [b, 2, H, L, d] and its key bias [b, L]."""

    inputs: list[int]
    kv: list[torch.Tensor]
    bias: torch.Tensor
    lengths: list[int]
    width: int


class Slots:
    """The slots of one generation call.

    Attributes:
        input, src, start: per slot, the input it holds (-1: none), that input's
            source length, and the step it was admitted at.
    """

    def __init__(
        self, d: Decoding, order: list[int], encode: Callable[[list[int]], Iterable[CrossBatch]], *,
        chunk: int, start_position: int, row_keys: Sequence[object], seed: int | None,
    ) -> None:
        self.d, self.encode, self.chunk = d, encode, chunk
        self.start_position, self.row_keys, self.seed = start_position, row_keys, seed
        slots = d.runner.slots
        self.input, self.src, self.start = [-1] * slots, [0] * slots, [0] * slots
        self.pending: deque[int] = deque(order)
        self.ready: deque[tuple[CrossBatch, int]] = deque()
        self.device = d.runner.tok_in.device

    def take(self, count: int) -> list[tuple[CrossBatch, int]]:
        """Up to `count` encoded inputs, encoding the next chunk of pending ones when needed.

        A slot set's worth at a time: larger encoder batches run little faster here, and
        their waiting cross K|V would raise peak memory above HF's.
        """
        runner = self.d.runner
        got = []
        while len(got) < count:
            if not self.ready:
                if not self.pending:
                    break
                chunk = [self.pending.popleft() for _ in range(min(len(self.pending), max(self.chunk, count)))]
                for batch in self.encode(chunk):
                    if batch.width > runner.src_cap:
                        runner.grow_source(batch.width)
                    self.ready.extend((batch, j) for j in range(len(batch.inputs)))
            got.append(self.ready.popleft())
        return got

    def admit(self, slots: list[int], items: list[tuple[CrossBatch, int]], step: int) -> None:
        """Put encoded inputs into slots: their cross K/V and bias, a fresh decoding state."""
        d = self.d
        runner, st, plan = d.runner, d.state, d.plan
        G = plan.group
        by_batch: dict[int, tuple[CrossBatch, list[int], list[int]]] = {}
        for s, (batch, j) in zip(slots, items, strict=True):
            entry = by_batch.setdefault(id(batch), (batch, [], []))
            entry[1].append(s)
            entry[2].append(j)
            self.input[s], self.src[s], self.start[s] = batch.inputs[j], batch.lengths[j], step
        for batch, ss, js in by_batch.values():
            s_t = torch.tensor(ss, device=self.device)
            j_t = torch.tensor(js, device=self.device)
            W = batch.width
            for layer, kv in enumerate(batch.kv):
                # index_select / index_copy_ move whole rows (advanced-index assignment
                # computes an offset per element and is several times slower)
                runner.cross_kv[layer][:, :W].index_copy_(0, s_t, kv.index_select(0, j_t))
            runner.cross_bias[s_t] = runner.min_value
            runner.cross_bias[s_t, :W] = batch.bias[j_t]
        s_t = torch.tensor(slots, device=self.device)
        rows = (s_t[:, None] * G + torch.arange(G, device=self.device)[None, :]).reshape(-1)
        st.age[rows] = 0
        st.hist[rows, 0] = plan.start_id
        st.row_done[rows] = False
        st.row_len[rows] = 0
        runner.tok_in[rows] = plan.start_id
        runner.pos_in[rows] = self.start_position
        runner.self_bias[rows] = runner.min_value
        if plan.mode == "sample":
            streams = [row_stream_key(self.seed, self.row_keys[self.input[s]], g) for s in slots for g in range(G)]
            st.stream[rows] = torch.tensor(streams, dtype=torch.long, device=self.device)
        if plan.mode == "beam":
            st.run_scores[s_t] = -1e9
            st.run_scores[s_t, 0] = 0.0
            st.fin_scores[s_t] = -1e9
            st.fin_flag[s_t] = False
            st.fin_len[s_t] = 0
            st.heur[s_t] = True

    def refill(self, finished: list[int], n_active: int, step: int) -> tuple[int, int]:
        """Freed slots take the next inputs at once; the ones that cannot be refilled are
        compacted away. Returns (active slots now, inputs admitted)."""
        fill = self.take(len(finished))
        if fill:
            self.admit(finished[: len(fill)], fill, step)
        holes = finished[len(fill) :]
        return (self._compact(holes, n_active) if holes else n_active), len(fill)

    def _compact(self, holes: list[int], n_active: int) -> int:
        """Move the last active slots into the holes so active slots stay a prefix."""
        hole_set = set(holes)
        new_n = n_active - len(holes)
        movers = [s for s in range(new_n, n_active) if s not in hole_set]
        targets = [h for h in sorted(holes) if h < new_n]
        assert len(movers) == len(targets)  # noqa: S101 - the arithmetic above guarantees it
        if movers:
            dst = torch.tensor(targets, device=self.device)
            src = torch.tensor(movers, device=self.device)
            for t in (*self.d.runner.slot_tensors(), *self.d.state.slot_tensors()):
                t.index_copy_(0, dst, t.index_select(0, src))
            for a, b in zip(targets, movers, strict=True):
                self.input[a], self.src[a], self.start[a] = self.input[b], self.src[b], self.start[b]
        for s in range(new_n, n_active):
            self.input[s] = -1
        return new_n
