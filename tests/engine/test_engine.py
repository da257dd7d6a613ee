"""The generation engine against transformers' own generate (hf_generate), on tiny models.

Every fast-path family (BERT, RoBERTa, GPT-2, TrOCR decoders; BART, mBART, Marian,
T5 v1.0, T5 v1.1 / Flan-T5, mT5 and UMT5 native seq2seq) and the MiniLM warm start: greedy token-identical, beam search with the
same n-best list and scores within 1e-4, batched, one by one, with fewer slots than
inputs (in-flight refill) and with rows that end at very different steps (an EOS bias
on the LM head makes the models stop early on some inputs and late on others).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil

import pytest
import torch

import tests.support.tiny as tiny
from combiner_core import (
    Combiner,
    GenerationEngine,
    GenerationParams,
    generate,
    random_combiner,
    resolve_dtype,
    tokenize_text,
    warm_start_combiner,
)
from combiner_core.describe import max_new_tokens_limit
from combiner_core.engine import hf_generate, notices
from combiner_core.engine.decoding import beam as beam_module
from combiner_core.engine.model import DecoderRunner, extract_decoder, fast_act
from combiner_core.engine.model import native as engine_native
from combiner_core.preprocess import collate_token_ids
from tests.support.families import (
    EOS_BIAS,
    FAMILIES,
    assert_same,
    bias_eos,
    build,
    engine_run,
    inputs_of,
    native_and_torch_step,
    near_ties,
    rows_of,
)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> tuple[str, Combiner]:
    c = build(request.param)
    bias_eos(c, EOS_BIAS[request.param])
    return request.param, c


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(strategy="greedy", max_new_tokens=16),
        GenerationParams(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=12),
    ],
    ids=["greedy", "beam3"],
)
def test_matches_hf_batched_one_by_one_and_refilled(family, params: GenerationParams) -> None:
    name, c = family
    batch = inputs_of(c)
    ref = hf_generate(c, batch, params)
    lengths = [r[0].num_tokens for r in ref]
    # the EOS bias makes rows end at very different steps, some at max_new_tokens
    assert max(lengths) - min(lengths) >= 4, f"{name}: lengths {lengths} do not spread"
    engine = GenerationEngine(c, params, slots=3, dtype=None)
    assert engine.fast_path, engine.fallback_reason
    with near_ties() as ties:
        ours = engine_run(engine, batch)
    assert_same(ours, ref, ties=ties)
    if NATIVE_BUILDS:  # CPU float32: the native step, and greedy's native token choice
        assert engine.native_step
        assert (engine._decoding.pick is not None) == (params.strategy == "greedy" and not engine.plan.processors)
    assert engine.stats.refills >= len(lengths) - 3  # every input beyond the first 3 took a freed slot
    assert engine.stats.decoder_efficiency == 1.0  # CPU: finished rows are never computed
    assert engine.stats.encoder_efficiency > 0.85 or c.modality == "image"
    # the CUDA-graph path's shapes, run eagerly: power-of-two slot buckets (finished
    # slots past the active ones are computed and ignored), every source and target column
    static = GenerationEngine(c, params, slots=6, dtype=None, static_shapes=True)
    with near_ties() as ties:
        from_static = engine_run(static, batch)
    assert_same(from_static, ref, ties=ties)
    assert static.stats.decoder_positions >= static.stats.active_positions
    # all inputs in one call of the public API, and one input per call
    with near_ties() as ties:
        together = generate(c, batch, params)
    assert_same(together, ref, ties=ties)
    with near_ties() as ties:
        one_by_one = [generate(c, row, params)[0] for row in rows_of(batch)[:4]]
    assert_same(one_by_one, ref[:4], ties=ties)


def test_static_shape_step_matches_the_exact_step_with_a_finished_row_in_its_bucket() -> None:
    """The CUDA-graph step's arithmetic on CPU: 3 active slots computed as a bucket of 4
    over every source and target column give the exact step's logits and cache writes,
    although the 4th slot holds a finished row at age T (its write is clamped in place)."""
    c = build("bert2gpt2")
    spec = extract_decoder(c.model)
    T, src_cap = 6, 8
    torch.manual_seed(0)
    runner = DecoderRunner(
        spec, slots=4, group=1, max_new_tokens=T, src_cap=src_cap, device=torch.device("cpu"),
        dtype=torch.float32, static_shapes=True,
    )
    assert runner.src_cap == src_cap and runner.bucket(3) == 4
    lengths, ages = [5, 3, 4, 2], [2, 0, 4, T]
    with torch.inference_mode():
        kv = runner.project_source(torch.randn(4, 5, spec.cross_dim))
        for layer, cross in enumerate(runner.cross_kv):
            cross[:, :5] = kv[layer]
        for s_, n in enumerate(lengths):
            runner.cross_bias[s_, :n] = 0.0
        for cache in runner.kv_cache:
            cache.copy_(torch.randn_like(cache))
        for r, age in enumerate(ages):
            runner.self_bias[r, : age + 1] = 0.0
        runner.age_in.copy_(torch.tensor(ages))
        runner.pos_in.copy_(torch.tensor(ages).clamp(max=T - 1))
        runner.tok_in.copy_(torch.tensor([3, 5, 7, 9]))
        before = [cache.clone() for cache in runner.kv_cache]
        static_logits = runner.forward(3, 5, 5).clone()
        static_caches = [cache.clone() for cache in runner.kv_cache]
        for cache, saved in zip(runner.kv_cache, before, strict=True):
            cache.copy_(saved)
        runner.static = False
        exact_logits = runner.forward(3, max(lengths[:3]), max(ages[:3]) + 1)
    assert static_logits.shape == exact_logits.shape == (3, spec.vocab_size)
    torch.testing.assert_close(static_logits, exact_logits, rtol=1e-5, atol=1e-5)
    for static_cache, exact_cache, saved in zip(static_caches, runner.kv_cache, before, strict=True):
        torch.testing.assert_close(static_cache[:3], exact_cache[:3], rtol=1e-5, atol=1e-5)
        assert not torch.equal(exact_cache[:3], saved[:3])  # the step wrote the active rows
        # the finished row wrote only its own last column, nothing of another row
        assert torch.equal(static_cache[3, : T - 1], saved[3, : T - 1])


# The native CPU step builds wherever a C++ compiler is (CI's machines have one); without
# one the engine runs the torch step, which every other test here checks against HF.
NATIVE_BUILDS = shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.mark.skipif(not NATIVE_BUILDS, reason="no C++ compiler: the engine runs the torch step")
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_native_step_matches_the_torch_step_in_any_row_split(family, chunks: int, monkeypatch) -> None:
    """native_step.cpp against the torch step on every family (BERT's GELU, GPT-2's tanh
    GELU, Marian's SiLU; pre- and post-LN; a slot's beams sharing its source), with the
    rows split into 1, 2 or 3 groups run in parallel: the same logits at every step and
    the same n-best lists."""
    name, c = family
    c = copy.deepcopy(c)
    # random biases and norm parameters: the tiny models start them at 0 and 1, which
    # would hide a bias or norm the native step dropped or took from the wrong place
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in c.model.parameters():
            if param.dim() == 1:
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
    params = GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)
    monkeypatch.setattr(DecoderRunner, "chunks", lambda self: chunks)
    engine = GenerationEngine(c, params, slots=4, dtype=None)
    forward, steps = DecoderRunner.forward, []

    def check(runner: DecoderRunner, n: int, mine: torch.Tensor, theirs: torch.Tensor) -> None:
        # float32 rounding in another order, amplified by the std-1 weights (HF's own
        # scores move 2.6e-4 between batch sizes): differences were up to 1.5e-4 of the
        # largest value (Marian, 3 groups); a wrong mask, bias or head is 5e-2 or more
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-3 * float(theirs.abs().max()))

    both = native_and_torch_step(forward, check, steps)
    monkeypatch.setattr(DecoderRunner, "forward", both)
    batch = inputs_of(c)
    ours = engine_run(engine, batch)
    assert engine._decoding.runner._native is not None, engine._decoding.runner.native_reason
    assert len(steps) >= 4 and max(steps) == 4
    monkeypatch.setattr(DecoderRunner, "forward", forward)
    torch_step = GenerationEngine(c, params, slots=4, dtype=None, native=False)
    assert_same(ours, engine_run(torch_step, batch))
    assert torch_step._decoding.runner._native is None and torch_step._decoding.runner.native_reason == "native=False"


def test_native_activation_codes() -> None:
    """Every activation of the fast-path families has a native form; others keep the torch step."""
    from transformers.activations import ACT2FN

    codes = {name: engine_native.act_code(fast_act(ACT2FN[name])) for name in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "swish", "silu", "quick_gelu")}
    assert codes == {"gelu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "relu": 2, "swish": 3, "silu": 3, "quick_gelu": None}


@pytest.mark.skipif(not NATIVE_BUILDS, reason="no C++ compiler: the engine runs the torch step")
def test_native_step_refuses_a_row_past_its_cache() -> None:
    """A row at column T would write into the next row's cache: the native step raises."""
    c = build("bert2gpt2")
    runner = DecoderRunner(
        extract_decoder(c.model), slots=2, group=1, max_new_tokens=4, src_cap=8, device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert runner._native is not None, runner.native_reason
    runner.cross_bias.zero_()
    runner.age_in.copy_(torch.tensor([1, 4]))
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"row 1 at column 4 outside \[0, 4\)"):
        runner.forward(2, 8, 2)


@pytest.mark.skipif(not NATIVE_BUILDS, reason="no C++ compiler: the engine runs the torch step")
@pytest.mark.parametrize("padding_idx", [-1, 1], ids=["positions", "roberta-positions"])
def test_native_greedy_pick_is_torchs_argmax_and_log_softmax(padding_idx: int) -> None:
    """greedy_pick against the torch ops it replaces: torch.argmax's tie order (first
    index) and NaN rule, log_softmax of the chosen logit, history, EOS and last-length ends,
    and the next positions (plain, or RoBERTa's padding_idx form)."""
    pick = engine_native.load_native().greedy_pick
    T, eos = 5, 4
    logits = torch.tensor(
        [
            [0.5, 3.0, 3.0, -1.0, 2.0, 0.0],  # a tie: the first index wins
            [0.0, 0.0, 0.0, 0.0, 9.0, 0.0],  # EOS
            [1.0, float("nan"), 5.0, 0.0, 0.0, 0.0],  # NaN wins, as in torch.argmax
            [-2.0, -1.0, -3.0, -1.5, -9.0, -1.0],  # at the last length
            [2.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # token 0 (not the padding id)
        ]
    )
    age0 = torch.tensor([0, 2, 1, 3, 2])
    pos0 = torch.tensor([2, 4, 3, 5, 4])
    step_logp, hist = torch.zeros(6, T), torch.zeros(6, T + 1, dtype=torch.long)
    age, tok, pos = torch.cat([age0, torch.tensor([0])]), torch.zeros(6, dtype=torch.long), torch.cat([pos0, torch.tensor([7])])
    ends = pick(logits, step_logp, hist, age, tok, pos, eos, T - 1, padding_idx)
    want = torch.argmax(logits, dim=-1)
    rows = torch.arange(5)
    assert tok[:5].tolist() == want.tolist() == [1, 4, 1, 1, 0]
    torch.testing.assert_close(
        step_logp[rows, age0], torch.log_softmax(logits, -1).gather(1, want[:, None])[:, 0], equal_nan=True
    )
    assert hist[rows, age0 + 1].tolist() == want.tolist()
    assert ends.tolist() == [False, True, False, True, False]
    assert age[:5].tolist() == (age0 + 1).tolist() and age[5] == 0  # rows past N untouched
    if padding_idx < 0:
        assert pos.tolist() == (pos0 + 1).tolist() + [7]
    else:  # a token other than padding_idx sits at padding_idx + 1 + its position
        assert pos[:5].tolist() == torch.where(want != padding_idx, age0 + 1 + padding_idx + 1, padding_idx).tolist()


def test_without_a_compiler_the_engine_runs_the_torch_step_and_says_why(monkeypatch, tmp_path, caplog) -> None:
    c = build("bert2gpt2")
    bias_eos(c, EOS_BIAS["bert2gpt2"])
    monkeypatch.setattr(engine_native, "_STATE", {})
    monkeypatch.setattr(engine_native, "_import_built", lambda name: None)  # no earlier build
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    params = GenerationParams(strategy="greedy", max_new_tokens=12)
    with caplog.at_level(logging.WARNING, logger="combiner_core.engine.model.native"):
        engine = GenerationEngine(c, params, slots=3, dtype=None)
        batch = inputs_of(c)
        with near_ties() as ties:
            ours = engine_run(engine, batch)
        GenerationEngine(c, params, slots=3, dtype=None).generate_token_ids([torch.tensor([2, 5, 3])])
    assert engine._decoding.runner._native is None and engine._decoding.runner.native_reason
    warnings = [r.getMessage() for r in caplog.records if "native CPU decode step unavailable" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, however many engines
    assert_same(ours, hf_generate(c, batch, params), ties=ties)


@pytest.mark.parametrize("static", [False, True], ids=["exact", "static"])
def test_beam_reorder_gives_every_beam_its_parents_cache_bit_for_bit(static: bool, monkeypatch) -> None:
    """After each beam step every running beam holds exactly its new parent's cached K|V
    in the columns it has written, although the reorder moves only the columns whose
    origin differs; the run includes parents that share columns with the beam they replace."""
    c = build("bert2gpt2")
    params = GenerationParams(strategy="beam", num_beams=3, max_new_tokens=12)
    engine = GenerationEngine(c, params, slots=3, dtype=None, static_shapes=static)
    reorder = beam_module.reorder
    checked = {"steps": 0, "shared_columns": 0}

    def checked_reorder(d, src: torch.Tensor, N: int) -> None:
        age = d.state.age[:N].clone()
        before = [cache[:N].clone() for cache in d.runner.kv_cache]
        reorder(d, src, N)
        for cache, old in zip(d.runner.kv_cache, before, strict=True):
            for i in range(N):
                written = int(age[i]) + 1
                parent = int(src[i])
                assert torch.equal(cache[i, :written], old[parent, :written]), f"row {i} (parent {parent})"
                if parent != i:
                    same = (old[i, :written] == old[parent, :written]).flatten(1).all(dim=1)
                    checked["shared_columns"] += int(same.sum())
        checked["steps"] += 1

    monkeypatch.setattr(beam_module, "reorder", checked_reorder)
    batch = inputs_of(c)
    with near_ties() as ties:
        ours = engine_run(engine, batch)
    assert_same(ours, hf_generate(c, batch, params), ties=ties)
    assert checked["steps"] >= 10
    assert checked["shared_columns"] > 0  # columns of a common ancestry that need not move


def test_minilm_warm_start_matches_hf(minilm_dir) -> None:
    c = warm_start_combiner(encoder_uri=str(minilm_dir), decoder_uri=str(minilm_dir), seed=0)
    eos = c.special_token_ids()["eos_token_id"]
    with torch.no_grad():  # make [SEP] likely enough to end some rows early
        c.model.decoder.cls.predictions.decoder.bias[eos] += 4.0
    texts = ["a red circle on the left", "the quick brown fox jumps over the lazy dog", "summary", "blue square top right corner"]
    ids = [tokenize_text(c.tokenizer, t, max_tokens=64).input_ids for t in texts]
    batch = collate_token_ids(ids, pad_token_id=c.tokenizer.pad_token_id)
    for params in (
        GenerationParams(strategy="greedy", max_new_tokens=10),
        GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=8),
    ):
        ref = hf_generate(c, batch, params)
        engine = GenerationEngine(c, params, slots=2, dtype=None)
        assert engine.fast_path
        with near_ties() as ties:
            ours = engine_run(engine, batch)
        assert_same(ours, ref, tol=1e-4, ties=ties)
        assert engine.stats.refills == 2


@pytest.mark.parametrize("name", ["bert2gpt2", "bart", "marian"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_length_and_repetition_controls_match_hf(name: str, strategy: str) -> None:
    c = build(name)
    bias_eos(c, EOS_BIAS[name] - 4)
    batch = inputs_of(c, 6)
    for params in (
        GenerationParams(strategy=strategy, num_beams=3, min_new_tokens=6, max_new_tokens=10),
        GenerationParams(strategy=strategy, num_beams=3, no_repeat_ngram_size=2, max_new_tokens=14),
        GenerationParams(strategy=strategy, num_beams=3, repetition_penalty=1.7, max_new_tokens=10),
        GenerationParams(strategy=strategy, num_beams=2, length_penalty=0.6, early_stopping=True, max_new_tokens=9),
        GenerationParams(strategy=strategy, num_beams=2, length_penalty=1.5, early_stopping="never", max_new_tokens=9),
    ):
        ref = hf_generate(c, batch, params)
        engine = GenerationEngine(c, params, slots=2, dtype=None)
        with near_ties() as ties:
            ours = engine_run(engine, batch)
        assert_same(ours, ref, ties=ties)


def test_sampling_depends_only_on_seed_and_row_key() -> None:
    c = build("bert2gpt2")
    bias_eos(c, 12)
    batch = inputs_of(c, 8)
    keys = [f"row-{i}" for i in range(8)]
    params = GenerationParams(strategy="sample", seed=11, top_k=8, top_p=0.9, temperature=1.3, num_return_sequences=2, max_new_tokens=12)
    reference = engine_run(GenerationEngine(c, params, dtype=None), batch, keys)
    by_key = dict(zip(keys, [[x.token_ids for x in r] for r in reference], strict=True))
    assert len({t for r in by_key.values() for t in r}) > 4, "samples should differ between rows"
    # other slot counts, reversed order, and a subset mixed with other rows
    for slots in (1, 3):
        out = engine_run(GenerationEngine(c, params, slots=slots, dtype=None), batch, keys)
        assert [[x.token_ids for x in r] for r in out] == list(by_key.values())
    # the CUDA-graph path's shapes (3 slots computed as a bucket of 4 at times)
    out = engine_run(GenerationEngine(c, params, slots=3, dtype=None, static_shapes=True), batch, keys)
    assert [[x.token_ids for x in r] for r in out] == list(by_key.values())
    order = [7, 2, 5, 0]
    sub = {k: v[order] for k, v in batch.items()}
    out = engine_run(GenerationEngine(c, params, slots=2, dtype=None), sub, [keys[i] for i in order])
    assert [[x.token_ids for x in r] for r in out] == [by_key[keys[i]] for i in order]
    # the public API with row keys, and another seed
    out = generate(c, sub, params, row_keys=[keys[i] for i in order])
    assert [[x.token_ids for x in r] for r in out] == [by_key[keys[i]] for i in order]
    other = engine_run(GenerationEngine(c, params.model_copy(update={"seed": 12}), dtype=None), batch, keys)
    assert [[x.token_ids for x in r] for r in other] != list(by_key.values())
    # scores are HF's: mean log-prob of the chosen tokens under the processed distribution
    assert all(x.score <= 0 for r in reference for x in r)


def test_sampling_filters_are_hfs() -> None:
    """top_k=1 or a tiny top_p leaves HF's filter one token: sampling must then be greedy;
    a repetition penalty reshapes the distribution before the filters, as in HF."""
    c = build("bart")
    bias_eos(c, EOS_BIAS["bart"])
    batch = inputs_of(c, 6)
    for greedy, sample in (
        (GenerationParams(max_new_tokens=10), GenerationParams(strategy="sample", seed=1, top_k=1, max_new_tokens=10)),
        (
            GenerationParams(max_new_tokens=10, repetition_penalty=2.0),
            GenerationParams(strategy="sample", seed=2, top_k=0, top_p=1e-6, temperature=0.7, repetition_penalty=2.0, max_new_tokens=10),
        ),
    ):
        ref = hf_generate(c, batch, greedy)
        out = generate(c, batch, sample)
        assert [r[0].token_ids for r in out] == [r[0].token_ids for r in ref]
        # one token survives the filter: each step's log-prob under the processed distribution is 0
        assert all(r[0].score == pytest.approx(0.0, abs=1e-6) for r in out)


@pytest.mark.parametrize("static", [False, True], ids=["exact", "static"])
def test_bfloat16_engine_runs(static: bool) -> None:
    c = build("bert2gpt2")
    bias_eos(c, EOS_BIAS["bert2gpt2"])
    params = GenerationParams(strategy="beam", num_beams=2, max_new_tokens=8)
    engine = GenerationEngine(c, params, dtype="bfloat16", slots=3, static_shapes=static)
    assert c.model.dtype == torch.bfloat16 and engine.fast_path
    out = engine_run(engine, inputs_of(c, 5))
    assert len(out) == 5 and all(0 < r[0].num_tokens <= 8 for r in out)
    assert engine._decoding.runner.kv_cache[0].dtype == torch.bfloat16 and engine._decoding.runner.static == static
    # bf16 rounding may flip near-ties, but most rows match the float32 engine's best beam
    c32 = build("bert2gpt2")
    bias_eos(c32, EOS_BIAS["bert2gpt2"])
    ref = engine_run(GenerationEngine(c32, params, dtype=None, slots=3), inputs_of(c32, 5))
    assert sum(a[0].token_ids == b[0].token_ids for a, b in zip(out, ref, strict=True)) >= 3


def test_family_without_fast_path_falls_back_to_hf_and_logs_once(caplog) -> None:
    c = build("pegasus")
    batch = inputs_of(c, 5)
    notices.forget()
    params = GenerationParams(strategy="beam", num_beams=2, max_new_tokens=6)
    with caplog.at_level(logging.WARNING, logger="combiner_core.engine.core"):
        first = GenerationEngine(c, params, slots=2, dtype=None)
        second = GenerationEngine(c, params, dtype=None)
    assert not first.fast_path and "pegasus" in first.fallback_reason
    messages = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert len(messages) == 1 and "'pegasus'" in messages[0]
    ref = hf_generate(c, batch, params)
    assert_same(engine_run(first, batch), ref)
    assert_same(engine_run(second, batch), ref)


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="expected one of auto"):
        resolve_dtype("int8", "cpu")


def test_position_limit_from_the_config_is_the_table_the_engine_reads(family) -> None:
    """The driver checks max_new_tokens against the config (no weights there); the engine
    reads the table: the two must agree for every fast-path family."""
    name, c = family
    assert max_new_tokens_limit(c.model.config.to_dict()) == extract_decoder(c.model).max_positions, name


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_max_new_tokens_past_the_position_table_ends_rows_at_the_limit(strategy: str, caplog) -> None:
    """A decoder with 8 positions asked for 64 tokens: rows end at 8 tokens (HF generate's
    output at max_new_tokens=8), said once in the log, never an IndexError."""
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    c = random_combiner(
        encoder_config=tiny.bert_config(bt), decoder_config=tiny.gpt2_config(gt, n_positions=8),
        tokenizer=bt, decoder_tokenizer=gt,
    )
    batch = inputs_of(c)
    notices.forget()
    extra = {"num_beams": 2} if strategy == "beam" else {}
    with caplog.at_level(logging.WARNING, logger="combiner_core.engine.core"):
        engines = [GenerationEngine(c, GenerationParams(strategy=strategy, max_new_tokens=64, **extra), slots=4,
                                    dtype=None) for _ in range(2)]
    with near_ties() as ties:
        ours = engine_run(engines[0], batch)
    ref = hf_generate(c, batch, GenerationParams(strategy=strategy, max_new_tokens=8, **extra))
    assert_same(ours, ref, ties=ties)
    assert max(r[0].num_tokens for r in ours) == 8  # some row ran into the limit
    said = [r.getMessage() for r in caplog.records if "positions" in r.getMessage()]
    assert len(said) == 1 and "max_new_tokens=64 is past the 8 positions" in said[0]


def test_an_engine_call_that_raises_leaves_the_engine_usable(monkeypatch) -> None:
    """A model call that fails mid-run (the pipeline then retries halves of the batch on
    the same engine) leaves no state behind that changes the next call's outputs."""
    c = build("bert2gpt2")
    bias_eos(c, EOS_BIAS["bert2gpt2"])
    params = GenerationParams(strategy="beam", num_beams=2, max_new_tokens=12)
    batch = inputs_of(c)
    engine = GenerationEngine(c, params, slots=3, dtype=None)
    forward = DecoderRunner.forward
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("injected mid-run failure")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DecoderRunner, "forward", failing)
    with pytest.raises(RuntimeError, match="injected"):
        engine_run(engine, batch)
    with near_ties() as ties:
        ours = engine_run(engine, batch)
    assert_same(ours, hf_generate(c, batch, params), ties=ties)
    half = rows_of(batch)[:3]
    with near_ties() as ties:
        ours = [engine_run(engine, r)[0] for r in half]
    assert_same(ours, hf_generate(c, batch, params)[:3], ties=ties)


@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (6, 7)])
def test_t5_relative_buckets_are_transformers(buckets: int, max_distance: int) -> None:
    """The decoder's relative-position buckets (unidirectional) against T5's and UMT5's own,
    over offsets far past max_distance (the last bucket) and positive ones (bucket 0)."""
    from transformers import UMT5Config
    from transformers.models.t5.modeling_t5 import T5Attention
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    from combiner_core.engine.model.description import relative_buckets

    offsets = torch.arange(-400, 5)[None, :] - torch.arange(3)[:, None]
    ours = relative_buckets(offsets, buckets, max_distance)
    t5 = T5Attention._relative_position_bucket(offsets, bidirectional=False, num_buckets=buckets, max_distance=max_distance)
    config = UMT5Config(relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance, is_decoder=True)
    umt5 = UMT5Attention(config, has_relative_attention_bias=True, layer_idx=0)._relative_position_bucket(offsets)
    assert torch.equal(ours, t5) and torch.equal(ours, umt5)
    assert int(ours.max()) == buckets - 1 and int(ours[0, -1]) == 0


def test_t5_decoder_description() -> None:
    """What t5.py reads: one shared bias table (T5, mT5) or one per layer (UMT5), the
    output scale by family and config, no position table (no position limit), the gated
    feed-forward and the attention width num_heads * d_kv."""
    descs = {name: extract_decoder(build(name).model) for name in ("t5", "t5v11", "mt5", "umt5")}
    assert [len(descs[n].rel_bias) for n in ("t5", "t5v11", "mt5", "umt5")] == [1, 1, 1, 2]
    assert descs["t5"].out_scale == pytest.approx(32**-0.5) and descs["umt5"].out_scale == pytest.approx(32**-0.5)
    assert descs["t5v11"].out_scale == 1.0 and descs["mt5"].out_scale == 1.0
    assert all(d.max_positions is None and d.pos_emb is None and d.rms_norm for d in descs.values())
    assert not descs["t5"].layers[0].gated and descs["t5v11"].layers[0].gated
    assert descs["t5v11"].inner == 24 and descs["t5v11"].hidden == 32 and len(descs["t5v11"].layers) == 3


def test_t5_bfloat16_engine_runs() -> None:
    """bfloat16 (the CUDA default) on the torch step and the static-shape path: HF's
    RMS-norm arithmetic there, the relative bias table in bfloat16."""
    c = build("t5v11")
    bias_eos(c, EOS_BIAS["t5v11"])
    params = GenerationParams(strategy="beam", num_beams=2, max_new_tokens=8)
    for static in (False, True):
        engine = GenerationEngine(copy.deepcopy(c), params, dtype="bfloat16", slots=3, static_shapes=static)
        out = engine_run(engine, inputs_of(c, 5))
        assert engine.fast_path and len(out) == 5 and all(0 < r[0].num_tokens <= 8 for r in out)
        assert engine._decoding.runner.rel.dtype == torch.bfloat16


def test_t5_half_precision_checkpoint_with_float32_wo_runs() -> None:
    """transformers loads T5's `wo` in float32 when the rest is bfloat16 (its
    _keep_in_fp32_modules): the engine, at the model's own dtype, still runs."""
    c = build("t5v11")
    bias_eos(c, EOS_BIAS["t5v11"])
    c.model.to(torch.bfloat16)
    for block in c.model.decoder.block:
        block.layer[2].DenseReluDense.wo.float()
    assert c.model.dtype == torch.bfloat16
    engine = GenerationEngine(c, GenerationParams(strategy="greedy", max_new_tokens=8), slots=3, dtype=None)
    out = engine_run(engine, inputs_of(c, 4))
    assert engine.fast_path and all(0 < r[0].num_tokens <= 8 for r in out)


def test_token_ids_outside_the_vocabulary_name_the_input() -> None:
    """A new user's trial handed the engine ids of another tokenizer and got torch's
    "index out of range in self"; the engine names the input, the id and the fix."""
    c = build("t5")
    size = c.model.get_encoder().get_input_embeddings().num_embeddings
    engine = GenerationEngine(c, GenerationParams(max_new_tokens=4), dtype=None)
    with pytest.raises(ValueError, match=rf"input 1 holds token id {size + 5}, outside .*0-{size - 1}.*own tokenizer"):
        engine.generate_token_ids([torch.tensor([5, 6, 1]), torch.tensor([7, size + 5, 1])])
    with pytest.raises(ValueError, match="input 0 holds token id -1"):
        engine.generate_token_ids([torch.tensor([-1, 1])])
    assert len(engine.generate_token_ids([torch.tensor([5, 6, 1])])) == 1
