"""Float32 decode-step matmuls on CPU with prepacked weights (oneDNN, shipped in torch).

Why: a decode step multiplies a few dozen rows by every weight matrix of the decoder and
by the LM head. At those shapes MKL's sgemm (what F.linear and at::mm run in float32)
copies the whole weight into its blocked layout on every call: in a py-spy profile of
the engine on a BART of bart-base shape (greedy, 32 slots, 2 threads, this 2-core AMD
EPYC) that copy (mkl_blas_def_sgemm_scopy_right16) was 27% of all the time, more than
the decoder's multiplies themselves, and MKL ran the [32 x 768] x [768 x 50265] LM head
no faster on two threads than on one. oneDNN's linear on a weight reordered once into
its own blocked layout (torch.ops.mkldnn._reorder_linear_weight) skips the copy.
Measured on that machine (CPU ms a call, one thread, F.linear against packed):

    rows x in x out       F.linear   packed
    16 x 768 x 2304          1.01      0.84   (BART self-attention q|k|v)
    16 x 3072 x 768          1.43      1.16   (BART fc2)
    16 x 768 x 50265        37.8      25.3    (BART LM head)
    16 x 512 x 32128        18.7      10.4    (T5 LM head)

and the 32-row BART LM head on two threads took 51 ms wall through F.linear, 22 ms packed.
At encoder shapes (thousands of rows) MKL is the faster (150-180 against 135-170
GFLOP/s), so the encoder and the cross-attention K/V projections keep F.linear.

The reorder hint (`rows`) picks oneDNN's layout for a batch size; a packed weight
serves any number of rows (hints of 16 and 64 ran alike; 1 was 10-40% slower).
Results equal F.linear's up to float rounding (a different summation order), checked at
first use against F.linear on this CPU; where the op is missing or the check fails, the
step keeps F.linear (logged once). The packed copy costs the weights' size again in
memory (the float weights stay: the encoder, HF fallbacks and tied embeddings read them).

No Ray here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import torch
import torch.nn.functional as F

from .description import DecoderDescription, Linear, with_linears

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}

# The matrices of a layer the decode step multiplies by (cross_k / cross_v run once per
# input at encoder shapes, so they stay as they are).
STEP_LINEARS = ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")


def _reorder(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), max(1, int(rows)))


def _apply(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def packing_available() -> bool:
    """True when oneDNN's prepacked linear runs here and agrees with F.linear (checked once
    per process on random data: relative error under 1e-5; the two differ by rounding)."""
    with _LOCK:
        if "ok" not in _STATE:
            _STATE["ok"], reason = _probe()
            if reason:
                log.warning("generation engine: prepacked float32 weights unavailable (%s); decode steps use F.linear",
                            reason)
        return bool(_STATE["ok"])


def _probe() -> tuple[bool, str]:
    if not torch.backends.mkldnn.is_available():
        return False, "torch built without oneDNN"
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(96, 80, generator=g)
        b = torch.randn(96, generator=g)
        for rows in (1, 7, 33):
            x = torch.randn(rows, 80, generator=g)
            ref = F.linear(x, w, b)
            got = _apply(x, _reorder(w, 16), b)
            err = float((got - ref).norm() / ref.norm())
            if got.shape != ref.shape or not err < 1e-5:
                return False, f"oneDNN linear differs from F.linear (relative error {err:.2e} at {rows} rows)"
    except (RuntimeError, AttributeError) as exc:  # an op missing from this build, or a CPU it rejects
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return True, ""


@dataclasses.dataclass
class PackedLinear(Linear):
    """The description's Linear with its weight also reordered for oneDNN (`packed`);
    `weight` stays the float [out, in] tensor (shapes, the torch step, fallbacks)."""

    packed: torch.Tensor | None = None
    rows: int = 32

    def __post_init__(self) -> None:
        if self.packed is None:
            self.packed = _reorder(self.weight, self.rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return _apply(x, self.packed, self.bias)
        y = _apply(x.reshape(-1, x.shape[-1]), self.packed, self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])


def _p(lin: Linear | None, rows: int) -> Linear | None:
    if lin is None or isinstance(lin, PackedLinear) or lin.weight.dtype != torch.float32 or lin.weight.device.type != "cpu":
        return lin
    return PackedLinear(lin.weight, lin.bias, rows=rows)


def pack_description(desc: DecoderDescription, *, rows: int) -> DecoderDescription:
    """A copy of `desc` whose step linears (STEP_LINEARS of every layer, BERT's head
    transform, the LM head) are PackedLinear for about `rows` rows a call; everything
    else is shared with `desc`. Call only when packing_available()."""
    return with_linears(desc, STEP_LINEARS, lambda lin: _p(lin, rows))


def is_packed(desc: DecoderDescription) -> bool:
    return all(isinstance(getattr(lay, n), PackedLinear) for lay in desc.layers for n in STEP_LINEARS)
