"""Activations as single cheap torch ops (the step calls them once per layer per token)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

_GELU_C1 = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C3 = _GELU_C1 * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(c (x + 0.044715 x^3))), as x * sigmoid(2c (...)):
    the same function (0.5 (1 + tanh z) = sigmoid(2z)) in ops that are cheaper on CPU
    than either HF's five-op form or torch's tanh-approximate gelu."""
    return x * torch.sigmoid(x * (_GELU_C1 + _GELU_C3 * x * x))


def fast_act(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same activation as one torch op instead of an nn.Module (or five ops).

    GPT-2's gelu_new spells the tanh approximation out in five tensor ops; the sigmoid
    form below is the same function (equal up to float rounding).
    """
    name = type(act).__name__
    if name == "NewGELUActivation":
        return gelu_tanh
    if name in ("GELUActivation", "GELUTanh") and callable(getattr(act, "act", None)):
        return act.act
    if isinstance(act, torch.nn.SiLU):
        return F.silu
    if isinstance(act, torch.nn.ReLU):
        return F.relu
    return act
