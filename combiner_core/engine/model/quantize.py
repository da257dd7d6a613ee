"""int8 on CPU (`quantize="int8"`), with CTranslate2's int8 semantics: every linear
layer's weight is int8 with one scale per output channel (symmetric, max |w| / 127),
activations are quantized per row at run time (dynamic), and biases, norms and
embeddings stay float32. It covers the encoder's nn.Linear layers, the decoder's
linears and the LM head.

The GEMM is torch's own dynamic quantized linear, `torch.ops.quantized.linear_dynamic`
on fbgemm / x86 packed weights (`linear_prepack`). Measured before choosing (2 threads,
this machine's 2 shared AVX2 cores without VNNI, torch 2.13, microseconds per call,
float32 F.linear against linear_dynamic):

    rows x in x out      float32   int8
    1 x 256 x 256           11       28
    32 x 256 x 1024        197       96
    128 x 256 x 1024       469      274
    32 x 512 x 2048        592      250
    128 x 512 x 2048      1800      944
    32 x 512 x 8000       4137     1396   (an LM head)
    32 x 2048 x 512        685      255

so int8 is ~2-3x faster from ~16 rows on and slower for a single tiny row (per-call
cost). `torch._int_mm` (int8 x int8 -> int32) on CPU is a reference loop: 5.1 ms for
32 x 256 x 1024, 25x float32; not usable.

linear_dynamic quantizes its input per TENSOR (one min/max over all rows), which would
make a row's output depend on the other rows of its batch (the engine's slots and the
label scorer's tries mix inputs freely). Per-row semantics on top of it: each row is
divided by its own max |x| (so every row lies in [-1, 1]) and one anchor row [1, -1,
0...] is appended, so the tensor's range is exactly [-1, 1] whatever the batch; the
quantization grid is then fixed and each row's int8 values depend on that row only,
and its output is multiplied back by the row's scale. The int32 accumulation is exact,
so a row's result is the same bit for bit in any batch (tests check it; the engine
encodes each input alone in int8 so that the whole path is: encoder.py). With
reduce_range (7-bit activations, what fbgemm needs on CPUs without VNNI to keep
vpmaddubsw's int16 pair sums from saturating) the activation step is 2/127 of a row's
max |x|; the relative error of one layer's output on random data is ~1-2%
(tests/engine/test_int8.py bounds it at 3%).

The decoder's torch step calls int8_linear; the native step (native_step.cpp's int8_mm)
takes the same packed weights and does the same per-row quantization in C++. The
encoder runs `quantized_copy` of the HF encoder (Int8LinearModule in place of each
nn.Linear / Conv1D), which shares the model's tensors and leaves the model unchanged.

The quantized-tensor constructors are deprecated in torch 2.13 (pytorch issue 184982)
but present and fast; their warning is silenced where weights are packed.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .description import DecoderDescription, Linear, with_linears

QUANTIZE_MODES = ("int8",)


def check_quantize(quantize: str | None, device: torch.device | str, dtype: torch.dtype) -> None:
    """Raise ValueError unless `quantize` is None, or "int8" on CPU in float32."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r}: expected one of {QUANTIZE_MODES} or None")
    if torch.device(device).type != "cpu":
        raise ValueError(f"quantize={quantize!r} runs on CPU only (device {device})")
    if dtype != torch.float32:
        raise ValueError(f"quantize={quantize!r} needs float32 (dtype {dtype}): biases and norms stay float32")


def pack_int8(weight: torch.Tensor) -> Any:
    """fbgemm packed weights for a float [out, in] weight: int8 per output channel,
    symmetric, scale max |w_row| / 127 (an all-zero row gets scale 1)."""
    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float64)
    q = torch.round(w / scale.to(torch.float32)[:, None]).clamp_(-127, 127).to(torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # deprecated constructors, see the module doc
        qw = torch._make_per_channel_quantized_tensor(q, scale, torch.zeros_like(amax, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None)


_ANCHORS: dict[int, torch.Tensor] = {}


def _anchor(width: int) -> torch.Tensor:
    """[1, width]: 1, -1, then zeros (cached: two small ops less per call)."""
    row = _ANCHORS.get(width)
    if row is None:
        row = torch.zeros(1, width)
        row[0, 0] = 1.0
        row[0, 1 if width > 1 else 0] = -1.0 if width > 1 else 1.0
        _ANCHORS[width] = row
    return row


def int8_linear(x: torch.Tensor, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + bias with W int8 per channel and x quantized per row (module doc)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    scale = x2.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    y = torch.ops.quantized.linear_dynamic(torch.cat((x2 / scale, _anchor(shape[-1]))), packed, True)[:-1]
    y = y * scale if bias is None else torch.addcmul(bias, y, scale)
    return y.view(*shape[:-1], y.shape[-1])


@dataclasses.dataclass
class Int8Linear(Linear):
    """The description's Linear in int8: `weight` is the float weight it was packed from
    (kept for shapes; the step reads `packed`)."""

    packed: Any = None

    def __post_init__(self) -> None:
        if self.packed is None:
            self.packed = pack_int8(self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.packed, self.bias)


def _q(lin: Linear | None) -> Linear | None:
    if lin is None or isinstance(lin, Int8Linear):
        return lin
    return Int8Linear(lin.weight, lin.bias)


def quantize_description(desc: DecoderDescription) -> DecoderDescription:
    """A copy of `desc` whose linears (every layer's, BERT's head transform, the LM head)
    are Int8Linear; embeddings, norms, biases and T5's position tables stay float."""
    names = ("qkv", "self_out", "cross_q", "cross_k", "cross_v", "cross_out", "fc1", "fc2")
    return with_linears(desc, names, _q)


def is_quantized(desc: DecoderDescription) -> bool:
    return isinstance(desc.lm_head, Int8Linear)


class Int8LinearModule(torch.nn.Module):
    """Stands in for an nn.Linear (or GPT-2's Conv1D) in an HF module: same input and
    output shapes and dtype, int8 arithmetic. `weight` and `bias` are the original
    float tensors (shared, not copied): HF code reads `.weight.dtype` / `.weight.device`
    (T5's feed-forward does), and tied weights keep pointing at them."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool = False) -> None:
        super().__init__()
        self.weight = weight  # a Parameter of the original module: registered, shared
        self.bias = bias
        self.in_features = weight.shape[0] if transposed else weight.shape[1]
        self.out_features = weight.shape[1] if transposed else weight.shape[0]
        self.packed = pack_int8(weight.t() if transposed else weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _swap(module: torch.nn.Module) -> int:
    """Replace every nn.Linear / Conv1D below `module` (itself excluded) in place."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Int8LinearModule(child.weight, child.bias))
            count += 1
        elif type(child).__name__ == "Conv1D" and hasattr(child, "nf"):  # transformers' GPT-2 Conv1D: [in, out]
            setattr(module, name, Int8LinearModule(child.weight, child.bias, transposed=True))
            count += 1
        else:
            count += _swap(child)
    return count


def quantized_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` with its nn.Linear (and Conv1D) layers in int8. The copy shares
    every parameter and buffer with `module` (nothing float is duplicated) and `module`
    itself is left unchanged."""
    if isinstance(module, torch.nn.Linear):
        return Int8LinearModule(module.weight, module.bias)
    memo: dict[int, Any] = {id(t): t for t in (*module.parameters(), *module.buffers())}
    clone = copy.deepcopy(module, memo)
    _swap(clone)
    return clone


def dequantize_check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """Relative error (Frobenius) of int8_linear against F.linear for these inputs: a
    diagnostic for tests and benchmarks."""
    ref = F.linear(x, weight, bias)
    got = int8_linear(x, pack_int8(weight), bias)
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))
