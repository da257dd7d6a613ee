"""Random-weight BART (bart-base shape) and T5 (t5-small shape, v1.0) combiners for the
CTranslate2 comparison in jobs/benchmark_generation.py, with a word-level tokenizer of the
model's vocabulary size so CTranslate2's converter finds one, and an EOS bias that makes
rows end at input-dependent steps (the model's own EOS decisions, nothing forced)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

SEED = 0
# Added to the EOS logit: chosen so greedy outputs of 128 random inputs spread from a few
# tokens to max_new_tokens (see the length distribution each run prints).
BART_EOS_BIAS = 2.1
# T5: the share of rows that end on their own EOS turns sharply with this offset (engine,
# 128 inputs, 64 new tokens: 0.17 -> mean 52.9, 100 rows at the limit, max/mean 1.21;
# 0.20 -> mean 33.9, 63 at the limit, max/mean 1.89; 0.25 -> mean 5.3). 0.20 meets the
# benchmark's max/mean >= 1.5: 65 rows end on their own EOS (53 within 8 tokens, 12 at
# 9-56), the rest reach max_new_tokens.
T5_EOS_BIAS = 0.20
T5_EMBED_SCALE = 0.05
T5_REL_BIAS_SCALE = 10.0
BART_INIT_STD = 0.02
# At BART's init the (post-LN) residual stream is the input token's embedding, so greedy
# repeats the start token (EOS) or one token forever whatever the source; scaling the
# decoder's attention output projections makes each row's state depend on its source.
BART_ATTN_OUT_SCALE = 10.0


def word_tokenizer(vocab_size: int, specials: list[str]):
    """A WordLevel fast tokenizer: `specials` first, then w<i> up to vocab_size."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    names = {"<s>": "bos_token", "</s>": "eos_token", "<pad>": "pad_token", "<unk>": "unk_token"}
    return PreTrainedTokenizerFast(tokenizer_object=core, **{names[s]: s for s in specials if s in names})


def bart_base(vocab_size: int = 50265, init_std: float = BART_INIT_STD):
    """BART of bart-base shape (6+6 layers, d_model 768, ffn 3072, 12 heads), random
    weights (seed 0), EOS favoured through final_logits_bias (which CTranslate2 converts
    as the output projection's bias)."""
    from transformers import BartConfig, BartForConditionalGeneration

    from combiner_core import Combiner
    from combiner_core.combiner import set_special_tokens

    tok = word_tokenizer(vocab_size, ["<s>", "<pad>", "</s>", "<unk>"])
    config = BartConfig(
        vocab_size=vocab_size, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
        init_std=init_std, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None,
    )
    torch.manual_seed(SEED)
    model = BartForConditionalGeneration(config).eval()
    set_special_tokens(model, decoder_start_token_id=2, pad_token_id=1, eos_token_id=2)
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.self_attn.out_proj.weight *= BART_ATTN_OUT_SCALE
            layer.encoder_attn.out_proj.weight *= BART_ATTN_OUT_SCALE
        model.final_logits_bias[0, 2] += BART_EOS_BIAS
    return Combiner(model=model, decoder_tokenizer=tok, tokenizer=tok, layout="seq2seq")


def t5_small(vocab_size: int = 32128):
    """T5 v1.0 of t5-small shape (6+6 layers, d_model 512, d_ff 2048, 8 heads, d_kv 64,
    ReLU, tied and scaled head), random weights (seed 0). T5's head has no bias: EOS is
    favoured by adding to its (tied) embedding row a multiple of the decoder's mean final
    hidden direction, an input-independent offset of about T5_EOS_BIAS to its logit."""
    from transformers import T5Config, T5ForConditionalGeneration

    from combiner_core import Combiner
    from combiner_core.combiner import set_special_tokens

    tok = word_tokenizer(vocab_size, ["<pad>", "</s>", "<unk>"])
    config = T5Config(
        vocab_size=vocab_size, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
        feed_forward_proj="relu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config).eval()
    set_special_tokens(model, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.no_grad():
        # At T5's init (embeddings std 1, layers ~d**-0.5) the residual stream is the input
        # embedding and greedy repeats the start token forever; smaller embeddings and a
        # larger relative bias let the layers (the source, the history) choose the tokens.
        model.shared.weight *= T5_EMBED_SCALE
        model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight *= T5_REL_BIAS_SCALE
    ids = token_inputs(vocab_size, 16, eos=1, seed=SEED + 1)
    with torch.no_grad():
        hidden = []
        for row in ids:  # the decoder's final states after the start token and a few random tokens
            dec = torch.cat([torch.zeros(1, dtype=torch.long), row[:8]])[None]
            out = model(input_ids=row[None], decoder_input_ids=dec, output_hidden_states=True)
            hidden.append(out.decoder_hidden_states[-1][0])
        scale = model.config.d_model**-0.5 if _scaled(model) else 1.0
        mean = torch.cat(hidden).mean(0) * scale
        model.shared.weight[1] += T5_EOS_BIAS * mean / mean.dot(mean)
    return Combiner(model=model, decoder_tokenizer=tok, tokenizer=tok, layout="seq2seq")


def _scaled(model) -> bool:
    return bool(getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings))


def token_inputs(vocab_size: int, count: int, *, eos: int, seed: int = SEED, lo: int = 32, hi: int = 256,
                 first: int = 4) -> list[torch.Tensor]:
    """`count` rows of lo..hi random tokens (ids >= first, no specials), each ending in eos."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        n = rng.randint(lo, hi)
        rows.append(torch.tensor([rng.randrange(first, vocab_size) for _ in range(n - 1)] + [eos]))
    return rows


def save_for_converter(combiner, folder: Path) -> Path:
    """save_pretrained of the model and its tokenizer, what CTranslate2's converter reads."""
    folder.mkdir(parents=True, exist_ok=True)
    combiner.model.save_pretrained(folder)
    combiner.tokenizer.save_pretrained(folder)
    return folder


def describe(kind: str, combiner) -> str:
    c = combiner.model.config
    if kind == "bart":
        return f"random BART, bart-base shape (6+6 layers, d_model 768, ffn 3072, 12 heads, vocab {c.vocab_size})"
    return f"random T5 v1.0, t5-small shape (6+6 layers, d_model 512, d_ff 2048, 8 heads, d_kv 64, vocab {c.vocab_size})"


# CTranslate2 uses Intel's MKL on Intel CPUs only and oneDNN elsewhere, unless told
# (CT2_USE_MKL, read once when the library loads). On the AMD EPYC development machine
# (Zen 4, 2 threads, 128 inputs, greedy) MKL made its float32 faster, T5 of t5-small shape
# 19.3-19.6 -> 15.0-16.3 s and BART of bart-base shape 32.9-33.9 -> 32.0-32.3 s, and its
# int8 (int8_float32) 2.6-6x slower (T5 7.5-8.6 -> 37-39 s, BART 14-15 -> 95-98 s); forcing
# its AVX-512 kernels (CT2_FORCE_CPU_ISA=AVX512) changed neither. So the peer runs at its
# best: float32 with MKL, int8 with its defaults.
PEER_ENV = {"float32": {"CT2_USE_MKL": "1"}, "int8_float32": {}}


def ctranslate2_runner(folder: Path, combiner, params, *, compute_type: str, threads: int, batch: int,
                       env: dict[str, str]):
    """Convert `folder` (once per compute type's process-wide cache) and return
    run(list of id tensors) -> [[Generated]] with CTranslate2's translate_batch on the
    same generation parameters (greedy or beam; token ids as vocabulary strings).

    env: CTranslate2 settings read when the library loads (PEER_ENV); the translator runs
    in a child process started with them, since one process holds one setting, and waits
    idle while the others run."""
    from combiner_core.engine.outputs import Generated, trim_generated

    tok = combiner.tokenizer
    ids = combiner.special_token_ids()
    eos, pad = ids["eos_token_id"], ids["pad_token_id"]
    beam = params.num_beams if params.strategy == "beam" else 1
    setup = dict(
        out_dir=str(_converted(folder)), vocab=tok.convert_ids_to_tokens(list(range(len(tok)))),
        compute_type=compute_type, threads=threads,
        options=dict(
            beam_size=beam, max_batch_size=batch, batch_type="examples", max_decoding_length=params.max_new_tokens,
            return_scores=True, return_end_token=True, num_hypotheses=1,
            length_penalty=params.length_penalty if params.length_penalty is not None else 1.0,
        ),
    )
    translate = _ChildTranslator(setup, env)

    def run(rows):
        out = []
        for token_ids, score in translate([row.tolist() for row in rows]):
            tokens = trim_generated(token_ids, pad=pad, eos={eos})
            out.append([Generated(text="", token_ids=tuple(tokens), score=score, num_tokens=len(tokens))])
        return out

    return run


def _converted(folder: Path) -> Path:
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            # transformers 5's BartConfig dropped normalize_before (BART is post-norm),
            # which CTranslate2 4.x's BART loader still reads
            if model.config.model_type == "bart" and not hasattr(model.config, "normalize_before"):
                model.config.normalize_before = False
            return model

    out_dir = folder.parent / f"{folder.name}-ct2"
    if not (out_dir / "model.bin").exists():
        Converter(str(folder)).convert(str(out_dir), force=True)
    return out_dir


def _translate_fn(*, out_dir: str, vocab: list[str], compute_type: str, threads: int, options: dict):
    """translate(list of id lists) -> [(token ids of the best hypothesis, its score)]."""
    import ctranslate2

    translator = ctranslate2.Translator(
        out_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=threads,
    )
    index = {t: i for i, t in enumerate(vocab)}

    def translate(rows: list[list[int]]) -> list[tuple[list[int], float]]:
        results = translator.translate_batch([[vocab[i] for i in row] for row in rows], **options)
        return [([index[t] for t in r.hypotheses[0]], float(r.scores[0])) for r in results]

    return translate


def _serve(conn, setup: dict, env: dict[str, str]) -> None:
    os.environ.update(env)  # before ctranslate2 loads: it reads its settings once
    translate = _translate_fn(**setup)
    conn.send("ready")
    try:
        while True:
            conn.send(translate(conn.recv()))
    except EOFError:  # the parent ended
        pass


class _ChildTranslator:
    """_translate_fn in a child process (spawned: a clean interpreter, so the environment
    is read fresh); calls block on the child's answer."""

    def __init__(self, setup: dict, env: dict[str, str]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, setup, env), daemon=True)
        self._proc.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("the CTranslate2 child process did not start")

    def __call__(self, rows: list[list[int]]) -> list[tuple[list[int], float]]:
        self._conn.send(rows)
        return self._conn.recv()
