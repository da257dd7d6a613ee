"""One tiny combiner per decoder family of the engine's fast path (BERT, RoBERTa, GPT-2,
TrOCR decoders; BART, mBART, Marian; T5 v1.0, T5 v1.1 / Flan-T5, mT5, UMT5; Pegasus for
the fallback), EOS biases that make rows end at different steps, inputs, and the
comparison against transformers' generate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForSeq2SeqLM,
    BartConfig,
    MarianConfig,
    MBartConfig,
    MT5Config,
    PegasusConfig,
    RobertaConfig,
    T5Config,
    UMT5Config,
)

import tests.support.tiny as tiny
from combiner_core import (
    Combiner,
    GenerationEngine,
    image_to_pixel_values,
    random_combiner,
    tokenize_text,
)
from combiner_core.combiner import set_special_tokens
from combiner_core.preprocess import collate_token_ids

TEXTS = [" ".join(tiny.WORDS[(i * 7 + k * 3) % len(tiny.WORDS)] for k in range(3 + i % 9)) for i in range(10)]
IMAGES = [Image.new("RGB", (20 + i, 30), ((i * 40) % 255, (i * 90) % 255, (i * 20) % 255)) for i in range(10)]


def _roberta_config(tok) -> RobertaConfig:
    return RobertaConfig(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=80, initializer_range=tiny.INIT,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def _t5_config(kind: str, tok):
    """Tiny T5-family configs. 8 relative buckets up to distance 20: distances from 4 on
    use the logarithmic buckets within a 16-token generation (the default 32 buckets
    would leave them untested). initializer_factor 2: outputs that depend on the input, without near-one-hot distributions (whose exact ties break beam order arbitrarily)."""
    common = dict(
        vocab_size=len(tok), d_model=32, num_heads=4, d_ff=64, num_layers=2, initializer_factor=2.0,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    if kind == "t5":  # v1.0: ReLU DenseReluDense, tied embeddings, outputs scaled by d_model**-0.5
        return T5Config(d_kv=8, feed_forward_proj="relu", **common)
    if kind == "t5v11":  # v1.1 / Flan-T5: gated GELU, untied head (no output scale), 4 x 6 heads != 32, 3 layers
        return T5Config(d_kv=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **{**common, "num_layers": 3})
    if kind == "mt5":
        return MT5Config(d_kv=8, feed_forward_proj="gated-gelu", **common)
    return UMT5Config(d_kv=8, feed_forward_proj="gated-gelu", **common)  # umt5: a bias table per layer


T5_KINDS = ("t5", "t5v11", "mt5", "umt5")


def _native(kind: str) -> Combiner:
    """A tiny native seq2seq combiner (BART, mBART, Marian, the T5 family, or Pegasus for the fallback)."""
    tok = tiny.bert_tokenizer()
    common = dict(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        init_std=tiny.INIT, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    if kind == "bart":
        config = BartConfig(decoder_start_token_id=tok.eos_token_id, **common)
    elif kind == "mbart":
        config = MBartConfig(decoder_start_token_id=tok.bos_token_id, scale_embedding=True, **common)
    elif kind == "marian":  # sinusoidal positions, swish, pad as decoder start, forced eos at max length
        config = MarianConfig(
            decoder_start_token_id=tok.pad_token_id, decoder_vocab_size=len(tok), scale_embedding=True, **common
        )
    elif kind in T5_KINDS:
        config = _t5_config(kind, tok)
    else:  # pegasus: no fast path (sinusoidal positions, not in the BART family list)
        config = PegasusConfig(decoder_start_token_id=tok.pad_token_id, **common)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    if kind == "t5v11":
        # transformers 5 ties T5's head to the embeddings whatever the config says; a v1.1
        # checkpoint loads its own lm_head weight: give the head weights of its own
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.randn(head.weight.shape) * 0.2)
    set_special_tokens(
        model, decoder_start_token_id=config.decoder_start_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Combiner(model=model, decoder_tokenizer=tok, tokenizer=tok, layout="seq2seq")


def build(name: str) -> Combiner:
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    if name in ("bart", "mbart", "marian", "pegasus", *T5_KINDS):
        return _native(name)
    if name == "bert2bert":
        return random_combiner(encoder_config=tiny.bert_config(bt), decoder_config=tiny.bert_config(bt), decoder_tokenizer=bt)
    if name == "bert2roberta":
        return random_combiner(encoder_config=tiny.bert_config(bt), decoder_config=_roberta_config(bt), decoder_tokenizer=bt)
    if name == "bert2gpt2":  # gpt2's 48 wide vs bert's 32: enc_to_dec_proj
        return random_combiner(
            encoder_config=tiny.bert_config(bt), decoder_config=tiny.gpt2_config(gt), tokenizer=bt, decoder_tokenizer=gt
        )
    if name == "vit2trocr":
        return random_combiner(
            encoder_config=tiny.vit_config(), decoder_config=tiny.trocr_config(bt), decoder_tokenizer=bt,
            image_processor=tiny.vit_image_processor(),
        )
    raise ValueError(name)


def bias_eos(combiner: Combiner, bias: float) -> None:
    """Add `bias` to the EOS logit (an LM-head bias; a biased head replaces a bias-free one,
    sharing its weight), so a tiny random model stops at input-dependent steps."""
    model = combiner.model
    owner = model.decoder if hasattr(model, "enc_to_dec_proj") or "EncoderDecoder" in type(model).__name__ else model
    head = owner.get_output_embeddings()
    if head.bias is None:
        new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        new.weight = head.weight
        torch.nn.init.zeros_(new.bias)
        owner.set_output_embeddings(new)
        head = new
    with torch.no_grad():
        head.bias[combiner.special_token_ids()["eos_token_id"]] += bias


# EOS biases that make each tiny model stop anywhere between the first and the last step.
EOS_BIAS = {
    "bert2bert": 12, "bert2roberta": 10, "bert2gpt2": 16, "vit2trocr": 8, "bart": 20, "mbart": 4, "marian": 10,
    "t5": 10, "t5v11": 3, "mt5": 15, "umt5": 3,
}
FAMILIES = list(EOS_BIAS)


def inputs_of(c: Combiner, count: int = len(TEXTS)) -> dict[str, torch.Tensor]:
    if c.modality == "image":
        return {"pixel_values": image_to_pixel_values(c.image_processor, IMAGES[:count])}
    ids = [tokenize_text(c.tokenizer, t, max_tokens=64).input_ids for t in TEXTS[:count]]
    return collate_token_ids(ids, pad_token_id=c.tokenizer.pad_token_id)


def rows_of(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    n = next(iter(batch.values())).shape[0]
    out = []
    for i in range(n):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        if "attention_mask" in row:  # unpadded, as a batch of one would be
            keep = row["attention_mask"][0].bool()
            row = {k: v[:, keep] for k, v in row.items()}
        out.append(row)
    return out


def engine_run(engine: GenerationEngine, batch: dict[str, torch.Tensor], keys=None):
    if "pixel_values" in batch:
        return engine.generate_pixels(batch["pixel_values"], keys)
    rows = [batch["input_ids"][i][batch["attention_mask"][i].bool()] for i in range(batch["input_ids"].shape[0])]
    return engine.generate_token_ids(rows, keys)


# Score tolerance on the tiny init_std=1 models: their large weights amplify float32
# rounding, so that HF's own scores for a row differ by up to 2.6e-4 (Marian, greedy)
# between a batch of ten and a batch of one. Real weights (MiniLM) are held to 1e-4.
TINY_TOL = 5e-4
# A decision taken by less than this may go either way between two correct float32
# implementations: the native step's log-probs differ from the torch step's by up to
# 3.6e-5 a step on these models (AVX-512, bert2bert beam-3), and on a Zen 4 (AVX-512)
# a 2.4e-6 gap between the 3rd and 4th beam candidates of one row flipped, so that row's
# third hypothesis differed from HF's. The same bound as the scores'.
TIE_MARGIN = TINY_TOL


@contextmanager
def near_ties() -> Iterator[set[int]]:
    """The rows whose decoding took a decision by less than TIE_MARGIN, in the engine calls
    made inside the block (row i of the k-th call counts after every row of the calls
    before it, as the calls' results concatenate). Outputs of such rows may differ from
    HF's without a bug; assert_same skips them.

    A decision is an order that changes the outcome if two neighbours swap. Greedy: a
    row's best and second-best processed scores. Beam (HF's step): of the top 2 x beams
    candidates, the first `beams` that do not end become the running beams, and those
    among the first `beams` that end join the finished ones; so the gap between the last
    running beam and the next non-ending candidate, and the gap at position `beams` when
    either side ends. Swaps that change neither set (two running beams, two dropped
    candidates) are not decisions. Sampling is not checked."""
    from combiner_core.engine import core
    from combiner_core.engine.decoding.processors import apply

    ties: set[int] = set()
    offset = [0]
    run, forward = core.GenerationEngine._run, core.GenerationEngine._forward

    def counted_run(self, lengths, *args, **kwargs):
        try:
            return run(self, lengths, *args, **kwargs)
        finally:
            offset[0] += len(lengths)

    def margin_forward(self, d, slots, n, step):
        logits = forward(self, d, slots, n, step)
        plan, st = d.plan, d.state
        if plan.mode == "sample":
            return logits
        G, N, V = plan.group, n * plan.group, logits.shape[-1]
        cur_len = st.age[:N] + 1
        if plan.mode == "beam":
            scores = torch.log_softmax(logits.float(), dim=-1)
            if plan.processors:
                scores = apply(plan.processors, st.hist[:N], cur_len, scores.clone())
            scores = (scores.view(n, G, V) + st.run_scores[:n, :, None]).view(n, -1)
            vals, idx = torch.topk(scores, k=plan.beams_to_keep + 1)
            for s in range(n):
                v = vals[s].tolist()
                ends = [int(i) % V in plan.eos_ids or int(cur_len[s * G]) + 1 >= plan.max_length for i in idx[s]]
                live = [j for j in range(len(v)) if not ends[j] and v[j] > -1.0e8]
                gaps = [v[live[G - 1]] - v[live[G]]] if len(live) > G else []
                if (ends[G - 1] or ends[G]) and v[G] > -1.0e8:
                    gaps.append(v[G - 1] - v[G])
                if gaps and min(gaps) < TIE_MARGIN:
                    ties.add(offset[0] + slots.input[s])
        else:
            scores = logits.float().clone()
            if plan.processors:
                scores = apply(plan.processors, st.hist[:N], cur_len, scores)
            top = torch.topk(scores, k=2).values
            gaps = (top[:, 0] - top[:, 1]).view(n, G).min(dim=1).values
            ties.update(offset[0] + slots.input[s] for s in range(n) if float(gaps[s]) < TIE_MARGIN)
        return logits

    core.GenerationEngine._run, core.GenerationEngine._forward = counted_run, margin_forward
    try:
        yield ties
    finally:
        core.GenerationEngine._run, core.GenerationEngine._forward = run, forward


def assert_same(ours, ref, *, tol: float = TINY_TOL, ties: set[int] | None = None) -> None:
    """Token-identical candidates with scores within tol, except on the rows in `ties`
    (near_ties: a decision closer than rounding), which must be at most a third of them."""
    ties = ties or set()
    assert len(ours) == len(ref)
    assert len(ties) <= len(ref) // 3, f"rows {sorted(ties)} of {len(ref)} took near-tied decisions"
    keep = [i for i in range(len(ref)) if i not in ties]
    ours, ref = [ours[i] for i in keep], [ref[i] for i in keep]
    assert [[c.token_ids for c in r] for r in ours] == [[c.token_ids for c in r] for r in ref]
    assert [[c.text for c in r] for r in ours] == [[c.text for c in r] for r in ref]
    for r_ours, r_ref in zip(ours, ref, strict=True):
        for a, b in zip(r_ours, r_ref, strict=True):
            assert a.score == pytest.approx(b.score, abs=tol)
            assert a.num_tokens == b.num_tokens


def native_and_torch_step(forward: Callable, check: Callable, steps: list[int]) -> Callable:
    """A DecoderRunner.forward for tests: each step runs the native step, then the torch
    step from the same cache, and `check(runner, n, native, torch_step)` gets the logits
    and each layer's cache written by both; returns the torch step's logits, so the
    engine goes on as the reference. `steps` gets each step's row count."""
    def both(runner, n: int, src_w: int, self_w: int) -> torch.Tensor:
        saved = [cache.clone() for cache in runner.kv_cache]
        ours = forward(runner, n, src_w, self_w).clone()
        written = [cache.clone() for cache in runner.kv_cache]
        native, runner._native = runner._native, None
        for cache, old in zip(runner.kv_cache, saved, strict=True):
            cache.copy_(old)
        ref = forward(runner, n, src_w, self_w)
        runner._native = native
        for mine, theirs in [(ours, ref), *zip(written, runner.kv_cache, strict=True)]:
            check(runner, n, mine, theirs)
        steps.append(n)
        return ref

    return both
