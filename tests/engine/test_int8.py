"""int8 on CPU (model/quantize.py): the quantized linear against float, per-row
quantization independent of the batch, the int8 engine against HF generate on the int8
copy of the same model (every fast-path family), and the argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from combiner_core import (
    GenerationEngine,
    GenerationParams,
    image_to_pixel_values,
    load_combiner,
    tokenize_text,
)
from combiner_core.engine import hf_generate
from combiner_core.engine.model import DecoderRunner, load_native
from combiner_core.engine.model.quantize import (
    Int8LinearModule,
    check_quantize,
    int8_linear,
    pack_int8,
    quantized_copy,
)
from combiner_core.labels import LabelScorer, LabelSet
from combiner_core.preprocess import collate_token_ids, decode_image
from pipelines.demo_data import facts, shapes
from pipelines.demo_data.shapes import SHAPES, captions_of
from pipelines.metrics import generation_metrics
from tests.support.families import (
    EOS_BIAS,
    FAMILIES,
    bias_eos,
    build,
    engine_run,
    inputs_of,
    native_and_torch_step,
)


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


@pytest.mark.parametrize("name", ["t5v11", "bart"])
def test_int8_engine_row_is_the_same_alone_in_a_batch_and_with_fewer_slots(name: str) -> None:
    """End to end, not just the linear: 24 inputs of 1-200 tokens (1-64 for the tiny BART) give bit-identical
    candidates whether a row is encoded and decoded with the others, alone, or through 5
    slots. Encoded in padded length buckets, a tiny Flan-T5's rows changed their scores by
    up to 0.23 and one its tokens, alone against in a batch (a new user's trial): int8
    amplified the float32 encoder's padding-dependent rounding."""
    import random

    c = build(name)
    vocab = c.model.config.vocab_size
    eos = c.special_token_ids()["eos_token_id"]
    rng = random.Random(5)
    longest = min(200, getattr(c.model.config, "max_position_embeddings", 200))  # the tiny BART has 64 positions
    rows = [torch.tensor([rng.randrange(4, vocab) for _ in range(rng.randint(0, longest - 1))] + [eos]) for _ in range(24)]
    for params in (GenerationParams(max_new_tokens=12),
                   GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=8)):
        engine = GenerationEngine(c, params, slots=16, dtype=None, quantize="int8")
        together = engine.generate_token_ids(rows)
        alone = [engine.generate_token_ids([r])[0] for r in rows]
        few = GenerationEngine(c, params, slots=5, dtype=None, quantize="int8").generate_token_ids(rows)
        for other in (alone, few):
            assert [[(x.token_ids, x.score) for x in r] for r in other] == \
                [[(x.token_ids, x.score) for x in r] for r in together]


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
    assert engine.native_step == (load_native() is not None)
    torch_step = GenerationEngine(c, params, slots=3, dtype=None, quantize="int8", native=False)
    theirs = engine_run(torch_step, batch)
    assert not torch_step.native_step
    ref = hf_generate(c, batch, params, model=quantized_copy(c.model))
    tokens = [[x.token_ids for x in r] for r in ref]
    # native int8 step == torch int8 step == HF's modules in int8
    assert [[x.token_ids for x in r] for r in ours] == tokens, name
    assert [[x.token_ids for x in r] for r in theirs] == tokens, name
    for r_ours, r_theirs, r_ref in zip(ours, theirs, ref, strict=True):
        assert r_ours[0].score == pytest.approx(r_ref[0].score, abs=5e-3)
        assert r_theirs[0].score == pytest.approx(r_ref[0].score, abs=5e-3)
    # the combiner's model is unchanged (float, same values)
    after = c.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, Int8LinearModule) for m in c.model.modules())


def test_engine_rejects_int8_outside_cpu_float32() -> None:
    c = build("bart")
    with pytest.raises(ValueError, match="float32"):
        GenerationEngine(c, GenerationParams(), dtype="float64", quantize="int8")


# --- quality on the trained demo models (models/, held-out data from pipelines/demo_data)

REPO = Path(__file__).resolve().parents[2]


def test_int8_captioner_exact_match_within_001_of_float() -> None:
    """models/demo-captioner on 200 held-out pictures (shapes split "heldout", greedy, 12
    tokens as jobs/specs/caption_parquet.yaml): exact match (pipelines.metrics, case and
    whitespace ignored) of int8 within 0.01 of float32's (both 1.0 when written)."""
    c = load_combiner(str(REPO / "models" / "demo-captioner"))
    rows = list(shapes.iter_examples("heldout", 200))
    pixels = image_to_pixel_values(c.image_processor, [decode_image(r["image"]) for r in rows])
    refs = [r["caption"] for r in rows]
    params = GenerationParams(strategy="greedy", max_new_tokens=12)
    scores = {}
    for q in (None, "int8"):
        out = GenerationEngine(c, params, quantize=q).generate_pixels(pixels)
        scores[q] = generation_metrics([o[0].text for o in out], refs, metrics=["exact_match"])["exact_match"]
    assert scores["int8"] >= scores[None] - 0.01, scores


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(strategy="greedy", max_new_tokens=96),
        GenerationParams(strategy="beam", num_beams=4, max_new_tokens=96, no_repeat_ngram_size=3),
    ],
    ids=["greedy", "beam4"],
)
def test_int8_summarizer_rouge_l_within_001_of_float(params: GenerationParams) -> None:
    """models/demo-summarizer on 60 held-out documents (facts split "heldout"; greedy as
    summarize_text_files.yaml, beam 4 with no_repeat_ngram_size 3 as summarize_nightly.yaml):
    ROUGE-L F1 (pipelines.metrics, rouge-score) of int8 within 0.01 of float32's. On 100
    documents when written: greedy 0.9906 both, beam 0.9775 float against 0.9761 int8."""
    s = load_combiner(str(REPO / "models" / "demo-summarizer"))
    docs = list(facts.iter_examples("heldout", 60))
    ids = [tokenize_text(s.tokenizer, d.text, max_tokens=512).input_ids for d in docs]
    refs = [d.summary for d in docs]
    scores = {}
    for q in (None, "int8"):
        out = GenerationEngine(s, params, quantize=q).generate_token_ids(ids)
        scores[q] = generation_metrics([o[0].text for o in out], refs, metrics=["rouge"])["rougeL"]
    assert abs(scores["int8"] - scores[None]) <= 0.01, scores


def test_int8_label_scorer_accuracy_unchanged_on_bundled_sample() -> None:
    """label_dataset's default job: the 48 pictures of jobs/sample/ labeled by shape with
    every caption of that shape as its verbalizations (models/demo-captioner): int8 picks
    the same label as float32 for as many rows, and its trie path agrees with its own
    reference path (HF's modules on the int8 copy)."""
    import pyarrow.parquet as pq

    c = load_combiner(str(REPO / "models" / "demo-captioner"))
    rows = [r for f in sorted((REPO / "jobs" / "sample").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    pixels = image_to_pixel_values(c.image_processor, [decode_image(r["image"]) for r in rows])
    labels = LabelSet.from_spec({shape: captions_of(shape) for shape in SHAPES})
    truth = [r["shape"] for r in rows]
    accuracy, picks = {}, {}
    for q in (None, "int8"):
        scored = LabelScorer(c, labels, quantize=q).score_pixels(pixels)
        picks[q] = [labels.names[max(range(len(SHAPES)), key=lambda k: s.logprobs[k])] for s in scored]
        accuracy[q] = sum(p == t for p, t in zip(picks[q], truth, strict=True)) / len(rows)
    assert accuracy["int8"] == accuracy[None], accuracy
    scorer = LabelScorer(c, labels, quantize="int8")
    fast = scorer.score_pixels(pixels[:6])
    ref = scorer._score({"pixel_values": pixels[:6]})
    for a, b in zip(fast, ref, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)


@pytest.mark.skipif(load_native() is None, reason="no C++ compiler: int8 runs the torch step")
@pytest.mark.parametrize("chunks", [1, 3])
def test_native_int8_step_matches_torch_int8_step_in_any_row_split(family, chunks: int, monkeypatch) -> None:
    """native_step.cpp's int8_mm against the torch step's int8_linear at every step of a
    beam search (rows in 1 or 3 parallel groups, a slot's beams sharing its source):
    the same logits and cache writes up to float rounding. Rounding in another order can
    move a row's scale by an ulp and flip an activation's int8 rounding, which the tiny
    std-1 weights amplify: multiplying the torch step's linear inputs by 1 + 1e-7 moved a
    bert2gpt2 step's logits by up to 7e-3 of the largest, and native against torch differed
    by up to 1.2e-2 there, a flip moving every logit of its row by ~1e-3 (elsewhere rows
    agree to ~1e-7). So: every value within 5e-2 of the largest, and at most a third of
    a step's rows with a value past 1e-3 (bert2gpt2 had 1 to 3 of 12); a wrong packed
    weight, scale or row order moves every row by 1e-1 or more."""
    name, c = family
    params = GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)
    monkeypatch.setattr(DecoderRunner, "chunks", lambda self: chunks)
    engine = GenerationEngine(c, params, slots=4, dtype=None, quantize="int8")
    forward, steps = DecoderRunner.forward, []

    def check(runner: DecoderRunner, n: int, mine: torch.Tensor, theirs: torch.Tensor) -> None:
        rows = ((mine - theirs).abs() / float(theirs.abs().max())).flatten(1).amax(1)[: n * runner.group]
        assert float(rows.max()) < 5e-2 and float((rows > 1e-3).float().mean()) <= 1 / 3, (name, n, rows)

    both = native_and_torch_step(forward, check, steps)
    monkeypatch.setattr(DecoderRunner, "forward", both)
    engine_run(engine, inputs_of(c))
    assert engine._decoding.runner._native is not None, engine._decoding.runner.native_reason
    assert len(steps) >= 4, name


def test_int8_fallback_family_runs_hf_generate_on_an_int8_copy() -> None:
    """Pegasus has no fast path: with quantize="int8" the engine runs HF generate on an
    int8 copy of the model (the same tokens as that reference), not the float model."""
    c = build("pegasus")
    params = GenerationParams(strategy="greedy", max_new_tokens=8)
    engine = GenerationEngine(c, params, slots=4, dtype=None, quantize="int8")
    assert not engine.fast_path
    assert any(isinstance(m, Int8LinearModule) for m in engine._fallback_model.modules())
    batch = inputs_of(c, 4)
    ours = engine_run(engine, batch)
    ref = hf_generate(c, batch, params, model=quantized_copy(c.model))
    assert [[x.token_ids for x in r] for r in ours] == [[x.token_ids for x in r] for r in ref]


@pytest.mark.parametrize("name", ["bart", "vit2trocr", "t5"])
def test_int8_encoder_keeps_shape_and_dtype(name: str) -> None:
    """The HF encoder's int8 copy: every nn.Linear swapped, outputs of the same shape and
    dtype as float32's (their values are checked on the trained models below: the tiny
    std-1 models' large weights amplify quantization to 10-30% after a few layers)."""
    c = build(name)
    encoder = c.model.get_encoder()
    q = quantized_copy(encoder)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    batch = inputs_of(c, 4)
    with torch.inference_mode():
        ref = encoder(**batch).last_hidden_state
        got = q(**batch).last_hidden_state
    assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float32


def test_int8_encoders_of_the_trained_models_close_to_float() -> None:
    """The demo models' encoders in int8 against float32 on held-out inputs: relative
    (Frobenius) error under 3% (0.55% for the captioner's ViT, 1.4% for the summarizer's
    BERT when written)."""
    c = load_combiner(str(REPO / "models" / "demo-captioner"))
    pixels = image_to_pixel_values(c.image_processor,
                                   [decode_image(r["image"]) for r in shapes.iter_examples("heldout", 8)])
    s = load_combiner(str(REPO / "models" / "demo-summarizer"))
    texts = [tokenize_text(s.tokenizer, d.text, max_tokens=512).input_ids for d in facts.iter_examples("heldout", 8)]
    ids = collate_token_ids(texts, pad_token_id=s.tokenizer.pad_token_id)
    for model, batch in ((c.model, {"pixel_values": pixels}), (s.model, ids)):
        encoder = model.get_encoder()
        with torch.inference_mode():
            ref = encoder(**batch).last_hidden_state
            got = quantized_copy(encoder)(**batch).last_hidden_state
        assert float((got - ref).norm() / ref.norm()) < 0.03
