"""Prepacked float32 weights (combiner_core/engine/model/packed.py) and the CPU encoder's
length buckets (combiner_core/engine/encoder.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import combiner_core.engine.core as core
from combiner_core import GenerationEngine, GenerationParams
from combiner_core.engine.encoder import length_buckets
from combiner_core.engine.model.packed import (
    STEP_LINEARS,
    PackedLinear,
    is_packed,
    packing_available,
)
from tests.support.families import (
    EOS_BIAS,
    assert_same,
    bias_eos,
    build,
    engine_run,
    inputs_of,
    near_ties,
)

needs_onednn = pytest.mark.skipif(not packing_available(), reason="torch without a working oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 5, 32, 70])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_linear_is_f_linear_up_to_rounding(rows: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(300, 48, generator=gen)
    bias = torch.randn(300, generator=gen) if with_bias else None
    lin = PackedLinear(weight, bias, rows=16)
    x = torch.randn(rows, 48, generator=gen)
    # float32 sums of 48 products in another order: ~1e-6 of the values
    torch.testing.assert_close(lin(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, rows, 48, generator=gen)  # the label scorer's [inputs, nodes, hidden]
    torch.testing.assert_close(lin(x3), F.linear(x3, weight, bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("name", ["bart", "t5v11", "bert2gpt2"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_cpu_engine_runs_on_packed_weights_with_the_same_outputs(name: str, strategy: str, monkeypatch) -> None:
    """A CPU float32 engine packs its step's matmuls and LM head; the outputs are those of
    the same engine on F.linear (tokens equal, scores within the tiny models' tolerance)."""
    c = build(name)
    bias_eos(c, EOS_BIAS[name])
    params = GenerationParams(strategy=strategy, num_beams=3, max_new_tokens=12)
    batch = inputs_of(c)
    packed = GenerationEngine(c, params, slots=4, dtype=None)
    assert is_packed(packed.desc) and isinstance(packed.desc.lm_head, PackedLinear)
    with near_ties() as ties:
        ours = engine_run(packed, batch)
    monkeypatch.setattr(core, "packing_available", lambda: False)
    plain = GenerationEngine(c, params, slots=4, dtype=None)
    assert not is_packed(plain.desc) and type(plain.desc.lm_head).__name__ == "Linear"
    with near_ties() as more:
        theirs = engine_run(plain, batch)
    assert_same(ours, theirs, ties=ties | more)
    # packing adds copies and keeps the float weights (the torch step and fallbacks read them)
    for mine, theirs in zip(packed.desc.layers, plain.desc.layers, strict=True):
        for n in STEP_LINEARS:
            assert torch.equal(getattr(mine, n).weight, getattr(theirs, n).weight)


def test_int8_and_other_dtypes_are_not_packed() -> None:
    c = build("bart")
    params = GenerationParams(strategy="greedy", max_new_tokens=4)
    assert not is_packed(GenerationEngine(c, params, slots=2, dtype=None, quantize="int8").desc)
    assert not is_packed(GenerationEngine(c, params, slots=2, dtype="bfloat16").desc)


def test_length_buckets_hold_padding_and_padded_tokens_under_their_limits() -> None:
    lengths = [200, 190, 185, 120, 118, 117, 116, 40, 39, 38, 10]
    order = list(range(len(lengths)))  # already longest first
    loose = length_buckets(order, lengths, cap=64)
    tight = length_buckets(order, lengths, cap=64, max_padding=0.03, max_tokens=400)
    for buckets, pad, cap_tokens in ((loose, 0.10, None), (tight, 0.03, 400)):
        assert sorted(i for b in buckets for i in b) == order  # every input once
        for b in buckets:
            real = sum(lengths[i] for i in b)
            padded = lengths[b[0]] * len(b)
            if len(b) > 1:
                assert padded <= (1 + pad) * real
                assert cap_tokens is None or padded <= cap_tokens
    assert len(tight) > len(loose)
    assert length_buckets(order, lengths, cap=2, max_tokens=10) == [[i] for i in order]  # longer than the cap: alone
    assert [len(b) for b in length_buckets(list(range(7)), [5] * 7, cap=3)] == [3, 3, 1]


@pytest.mark.parametrize("name", ["t5", "t5v11", "mt5"])
def test_t5_encoder_forward_is_transformers_on_every_real_position(name: str) -> None:
    """The engine's T5 / mT5 encoder (bias and padding mask combined once) against the HF
    encoder on padded batches: equal outputs at every real position (random norm
    weights, so a norm read from the wrong place shows)."""
    from combiner_core.engine.model.t5 import t5_encoder_forward
    from combiner_core.preprocess import collate_token_ids

    c = build(name)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in c.model.parameters():
            if param.dim() == 1:
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
    stack = c.model.get_encoder()
    forward = t5_encoder_forward(stack)
    assert forward is not None
    rows = [torch.randint(3, c.model.config.vocab_size, (n,), generator=gen) for n in (17, 9, 3, 17, 1)]
    batch = collate_token_ids(rows, pad_token_id=c.tokenizer.pad_token_id)
    with torch.inference_mode():
        ref = stack(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = forward(batch["input_ids"], batch["attention_mask"])
        same_length = forward(batch["input_ids"][:1], batch["attention_mask"][:1])  # no padding: no mask
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(same_length[0], ref[0], rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_t5_encoder_forward_leaves_umt5_and_decoders_to_transformers() -> None:
    from combiner_core.engine.model.t5 import t5_encoder_forward

    assert t5_encoder_forward(build("umt5").model.get_encoder()) is None
    assert t5_encoder_forward(build("t5").model.get_decoder()) is None
