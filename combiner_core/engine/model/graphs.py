"""CUDA graphs of the decode step: one captured graph per (slots bucket, source width).

A runner with static shapes computes a power-of-two bucket of slots over the full
source width and cache length, so a handful of graphs serve every step of a call; a
replay skips the per-kernel launch cost that dominates small decode steps on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class StepGraphs:
    """Captured graphs of `step(n, src_w, self_w)` (a runner's static-shape step), by (n, src_w)."""

    def __init__(self, device: torch.device, step: Callable[[int, int, int], torch.Tensor]) -> None:
        self.device, self._step = device, step
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def clear(self) -> None:
        """Forget every graph (they point at buffers the runner is replacing)."""
        self._graphs.clear()

    def replay(self, n: int, src_w: int, self_w: int) -> torch.Tensor:
        """The step's output for (n, src_w), capturing its graph on first use."""
        entry = self._graphs.get((n, src_w))
        if entry is None:
            entry = self._graphs[(n, src_w)] = self._capture(n, src_w, self_w)
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, n: int, src_w: int, self_w: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the step for (n, src_w). Inputs are already staged for the real step, and
        the step only writes K/V at the staged positions from staged inputs, so the warm-up
        and capture runs write exactly what the replay will: capturing is side-effect free."""
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(n, src_w, self_w)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step(n, src_w, self_w)
        return graph, out
