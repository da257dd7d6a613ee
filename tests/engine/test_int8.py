"""int8 on CPU (model/quantize.py): the quantized linear against float, per-row
quantization independent of the batch, the int8 engine against HF generate on the int8
copy of the same model (every fast-path family), and the argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from combiner_core import GenerationEngine, GenerationParams
from combiner_core.engine import hf_generate
from combiner_core.engine.model.quantize import (
    Int8LinearModule,
    check_quantize,
    int8_linear,
    pack_int8,
    quantized_copy,
)
from tests.support.families import EOS_BIAS, FAMILIES, bias_eos, build, engine_run, inputs_of


@pytest.mark.parametrize("shape", [(1, 64, 32), (7, 256, 1024), (33, 512, 96)])
def test_int8_linear_close_to_float(shape: tuple[int, int, int]) -> None:
    """Relative (Frobenius) error under 3%: 8-bit per-channel weights (step max|w|/127)
    and 7-bit per-row activations (reduce_range: step 2/127 of a row's max |x|) give
    ~1-2% on Gaussian data; the bound leaves room for the worst seeds."""
    rows, width, out = shape
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, width, generator=g)
    w = torch.randn(out, width, generator=g) * 0.05
    b = torch.randn(out, generator=g)
    ref = F.linear(x, w, b)
    got = int8_linear(x, pack_int8(w), b)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert float((got - ref).norm() / ref.norm()) < 0.03
    ref0 = F.linear(x, w)
    assert float((int8_linear(x, pack_int8(w), None) - ref0).norm() / ref0.norm()) < 0.03


def test_int8_rows_independent_of_batch() -> None:
    """A row's output is bit-identical alone and in any batch (per-row scales, fixed grid),
    including next to rows 1000x larger and all-zero rows; 3-D inputs keep their shape."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 128, generator=g)
    x[2] *= 1000.0
    x[4] = 0.0
    packed = pack_int8(torch.randn(40, 128, generator=g))
    bias = torch.randn(40, generator=g)
    whole = int8_linear(x, packed, bias)
    for i in range(6):
        assert torch.equal(int8_linear(x[i : i + 1], packed, bias), whole[i : i + 1])
    assert torch.equal(whole[4], bias)
    assert torch.equal(int8_linear(x.view(2, 3, 128), packed, bias), whole.view(2, 3, 40))


def test_quantized_copy_shares_and_keeps_the_original() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    q = quantized_copy(model)
    assert isinstance(q[0], Int8LinearModule) and isinstance(q[2], Int8LinearModule)
    assert isinstance(model[0], torch.nn.Linear)  # the original is untouched
    assert q[0].weight is model[0].weight  # float tensors shared, not copied
    x = torch.randn(5, 16)
    with torch.no_grad():
        ref = model(x)
        assert float((q(x) - ref).norm() / ref.norm()) < 0.05


def test_check_quantize_errors() -> None:
    check_quantize(None, "cpu", torch.float16)
    check_quantize("int8", "cpu", torch.float32)
    with pytest.raises(ValueError, match="CPU only"):
        check_quantize("int8", "cuda", torch.float32)
    with pytest.raises(ValueError, match="float32"):
        check_quantize("int8", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="int4"):
        check_quantize("int4", "cpu", torch.float32)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    c = build(request.param)
    bias_eos(c, EOS_BIAS[request.param])
    return request.param, c


def test_int8_engine_matches_hf_on_int8_model(family) -> None:
    """Greedy int8 engine (the torch step, slots refilled) gives HF generate's tokens on
    the int8 copy of the model (the same quantized weights, per-row activations): the
    engine's own decoder arithmetic agrees with transformers' modules in int8."""
    name, c = family
    params = GenerationParams(strategy="greedy", max_new_tokens=16)
    batch = inputs_of(c)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    engine = GenerationEngine(c, params, slots=3, dtype=None, quantize="int8")
    assert engine.fast_path, engine.fallback_reason
    ours = engine_run(engine, batch)
    assert not engine.native_step  # int8 runs the torch step (logged once)
    ref = hf_generate(c, batch, params, model=quantized_copy(c.model))
    assert [[x.token_ids for x in r] for r in ours] == [[x.token_ids for x in r] for r in ref], name
    for r_ours, r_ref in zip(ours, ref, strict=True):
        assert r_ours[0].score == pytest.approx(r_ref[0].score, abs=5e-3)
    # the combiner's model is unchanged (float, same values)
    after = c.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, Int8LinearModule) for m in c.model.modules())


def test_engine_rejects_int8_outside_cpu_float32() -> None:
    c = build("bart")
    with pytest.raises(ValueError, match="float32"):
        GenerationEngine(c, GenerationParams(), dtype="float64", quantize="int8")
