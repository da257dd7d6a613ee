"""Reading a Hugging Face module's weights into the description's Linear / Norm (views)."""

from __future__ import annotations

import torch

from .description import Linear, Norm


def read_linear(module: torch.nn.Module) -> Linear:
    return Linear(module.weight, module.bias)


def read_conv1d(module: torch.nn.Module) -> Linear:
    # GPT-2's Conv1D stores [in, out]; the transposed view feeds F.linear without a copy.
    return Linear(module.weight.t(), module.bias)


def read_norm(module: torch.nn.Module | None) -> Norm | None:
    if module is None:
        return None
    return Norm(module.weight, module.bias, float(module.eps))


def fused_qkv(q: Linear, k: Linear, v: Linear, scale: float) -> Linear:
    """q|k|v in one matmul; the query rows carry the attention scale, so the step
    never multiplies scores (one op less per layer)."""
    weight = torch.cat([q.weight * scale, k.weight, v.weight], dim=0)
    bias = None
    if q.bias is not None:
        bias = torch.cat([q.bias * scale, k.bias, v.bias], dim=0)
    return Linear(weight, bias)


def scaled_linear(lin: Linear, scale: float) -> Linear:
    return Linear(lin.weight * scale, None if lin.bias is None else lin.bias * scale)
