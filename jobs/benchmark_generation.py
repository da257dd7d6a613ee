"""Benchmark the generation engine against transformers' generate, side by side in one process.

    python jobs/benchmark_generation.py                                # small captioner, greedy, batch 32
    python jobs/benchmark_generation.py --strategy beam                # beam search, 4 beams
    python jobs/benchmark_generation.py --model base --strategy beam   # 12+12 layers, hidden 768
    python jobs/benchmark_generation.py --batch 128
    python jobs/benchmark_generation.py --no-native                    # the engine's torch step on CPU
    python jobs/benchmark_generation.py --quantize int8                # + the int8 engine (CPU), side by side
    python jobs/benchmark_generation.py --peer ctranslate2 --model bart  # + CTranslate2 float32 and int8 (CPU)
    python jobs/benchmark_generation.py --peer ctranslate2 --model t5 --strategy beam

Both paths get the same model, inputs and GenerationParams. HF runs `generate` on
batches of --batch inputs (combiner_core.engine.hf_generate: what combiner_core.generate did
before the engine); the engine is built once, as an actor builds it, with --batch
slots, and is handed all --rows inputs per run (a block several times the slot count).
Runs alternate (HF, engine, HF, engine...) after one untimed warm-up each, so load
from other processes hits both alike. Per run it prints tokens/s and peak memory
(resident set above the idle process on CPU, sampled every 0.5 ms with glibc returning
freed tensors to the OS, in one extra untimed run each after the timed ones; max
allocated on CUDA), and for the engine its decoder
efficiency (share of computed decoder positions that belonged to unfinished rows)
and encoder efficiency (share of encoder positions that were not padding).

Output lengths come from the models' own EOS decisions: the small model is
models/multishape-captioner (ViT + GPT-2 trained on pictures of one to three shapes,
captions of 9/18/27 tokens); the base model is a bert2bert of BERT-base size grown
from the MiniLM-L6 warm start (units duplicated, layers applied twice) whose [SEP]
logit carries a fixed bias, so its outputs end anywhere from the first to the last step.

With --quantize int8 a third contender, the engine with quantize="int8" (CPU float32;
combiner_core/engine/model/quantize.py), runs in the same alternation, and the JSON adds
its rate, int8_over_engine (its tokens/s over the float32 engine's) and the share of
rows whose tokens equal the float32 engine's.

With --peer ctranslate2 (pip install -e .[bench]; --model bart: random BART of bart-base
shape, --model t5: random T5 v1.0 of t5-small shape, jobs/peer_models.py; 128 inputs of
32-256 tokens by default) the same checkpoint, saved with save_pretrained and converted by
ctranslate2.converters.TransformersConverter, runs as two more contenders, CTranslate2
float32 and int8 (compute_type int8_float32), intra_threads = torch's threads,
inter_threads 1, token ids handed over as the vocabulary's token strings; the engine int8
runs too. Each CTranslate2 contender runs in a child process of its own, so that each gets
the library settings it is fastest with on this CPU (peer_models.PEER_ENV: float32 with
MKL, which CTranslate2 leaves off on AMD CPUs; --peer-defaults: its own defaults); it
waits idle while the others run, and its time includes the pipe (milliseconds). The JSON adds ratio_vs_peer_fp32 (engine float32 tokens/s over CTranslate2
float32), ratio_vs_peer_int8 (engine int8 over CTranslate2 int8), ratio_vs_hf,
outputs_identical_to_hf, int8_rows_equal_fp32 and peer_rows_equal_hf (shares of rows), and
rows_ratio_vs_peer_fp32 / _int8 (CTranslate2's seconds over the engine's for the same rows:
tokens/s counts each contender's own outputs, which differ where its outputs do); these
pool every timed run, and best_run gives the same ratios from each contender's fastest run.

The last line is one JSON object: ratio (engine tokens/s over HF tokens/s), the two
rates, efficiencies, outputs_identical, output_lengths, peak memory, model, strategy, batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

SMALL_MODEL = REPO / "models" / "multishape-captioner"
BASE_EOS_BIAS = 3.5  # added to the [SEP] logit of the MiniLM-derived base model (see base_model)
WORDS = (
    "the a of and to in is was for on that with as by at from it this be are have not or "
    "one all were when there can an which their if has more time will about would they year "
    "new city school river music world report market water family night house game team "
    "people state work group system company summer history north south early light power "
    "small large green red blue yellow circle square triangle left right top bottom image"
).split()


def small_model():
    """The multi-shape captioner and its held-out pictures' pixel values."""
    from combiner_core import image_to_pixel_values, load_combiner

    if not (SMALL_MODEL / "config.json").exists():
        raise SystemExit(
            f"{SMALL_MODEL} is missing: python -m pipelines.demo_data.multishape && "
            "python jobs/finetune.py --spec jobs/specs/finetune_multishape_captioner.yaml"
        )
    combiner = load_combiner(str(SMALL_MODEL))
    from io import BytesIO

    from PIL import Image

    from pipelines.demo_data.multishape import iter_examples

    def inputs(n: int):
        images = [Image.open(BytesIO(row["image"])).convert("RGB") for row in iter_examples("heldout", n)]
        return image_to_pixel_values(combiner.image_processor, images)

    return combiner, inputs


def base_model():
    """A BERT-base-size bert2bert (12 + 12 layers, hidden 768, 12 heads) derived from MiniLM-L6.

    Random weights at this size make a chaotic or a stuck decoder (BERT's 0.02 init
    repeats one token forever; large inits flip outputs on float noise, so that even
    HF disagrees with itself between batch sizes). So the model is grown from the
    MiniLM warm start (real BERT weights, random cross-attention, seed 0), as model-
    growth methods do: every unit is duplicated (function-preserving: duplicated
    inputs meet halved weights; queries scaled by 1/sqrt(2) for the doubled head
    width; the LM-head LayerNorm halved because its output meets the tied, duplicated
    embeddings) and every layer is applied twice (depth 6 -> 12). The decoder's [SEP]
    logit gets +BASE_EOS_BIAS, so outputs end when the model's own [SEP] logit wins:
    after 2 tokens for some inputs, 40+ for others (nothing is forced).
    """
    import math

    import torch

    from combiner_core import random_combiner, warm_start_combiner
    from jobs.make_demo_data import minilm_folder

    small = warm_start_combiner(encoder_uri=str(minilm_folder()), decoder_uri=str(minilm_folder()), seed=0)
    tokenizer = small.tokenizer
    src = small.model.state_dict()
    d_small = small.model.config.encoder.hidden_size  # 384
    i_small = small.model.config.encoder.intermediate_size  # 1536
    heads = small.model.config.encoder.num_attention_heads  # 12
    head = d_small // heads
    config = dict(
        model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=2 * d_small, num_hidden_layers=12,
        num_attention_heads=heads, intermediate_size=2 * i_small, max_position_embeddings=512,
    )
    combiner = random_combiner(encoder_config=config, decoder_config=config, decoder_tokenizer=tokenizer, seed=0)
    wide = torch.arange(2 * d_small)
    # new unit -> MiniLM unit, so that each head's 2*head dims hold its head dims twice
    hidden_map = (wide // (2 * head)) * head + (wide % (2 * head)) % head
    inter_map = torch.arange(2 * i_small) % i_small

    def index_map(size: int):
        return hidden_map if size == 2 * d_small else inter_map if size == 2 * i_small else None

    with torch.no_grad():
        for name, param in combiner.model.named_parameters():
            parts = name.split(".")
            if "layer" in parts:
                k = parts.index("layer") + 1
                parts[k] = str(int(parts[k]) // 2)  # each MiniLM layer twice
            w = src[".".join(parts)]
            if "embeddings" in name:
                w = w[:, hidden_map] if w.dim() == 2 else w[hidden_map]
            elif w.dim() == 2:
                rows, cols = index_map(param.shape[0]), index_map(param.shape[1])
                w = (w if rows is None else w[rows]) if cols is None else (w if rows is None else w[rows])[:, cols] / 2
            else:
                rows = index_map(param.shape[0])
                w = w if rows is None else w[rows]
            if ".query." in name:
                w = w / math.sqrt(2)
            if "predictions.transform.LayerNorm" in name:
                w = w / 2
            param.copy_(w)
    eos = combiner.special_token_ids()["eos_token_id"]
    with torch.no_grad():
        combiner.model.decoder.cls.predictions.decoder.bias[eos] += BASE_EOS_BIAS

    def inputs(n: int):
        import random

        rng = random.Random(0)
        rows = []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 60))]
            rows.append(torch.tensor(tokenizer(" ".join(words))["input_ids"]))
        return rows

    return combiner, inputs


def release_freed_memory_at_once() -> None:
    """Make glibc hand freed tensors back to the OS at once (mmap above 64 KiB, trim at 0),
    so the resident set tracks live memory and one run's peak does not hide in the
    allocator's free lists. Set only for the memory runs: timed runs keep the default
    allocator, as a Ray actor has it: an mmap and fresh page faults per tensor slowed
    HF's beam search 3x and the engine's 2x (small model), which inflated the ratio."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        print("memory: not glibc, the resident set includes the allocator's free lists")
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_trim_threshold, 0)
    libc.mallopt(m_mmap_threshold, 65536)
    libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above its start: CUDA max allocated, or the resident set on CPU."""

    def __init__(self, device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.peak = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["small", "base", "bart", "t5"], default="small",
                        help="bart / t5: random bart-base / t5-small shapes (jobs/peer_models.py), for --peer")
    parser.add_argument("--peer", choices=["ctranslate2"], default=None,
                        help="also time CTranslate2 float32 and int8 on the same checkpoint (CPU; pip install -e .[bench])")
    parser.add_argument("--strategy", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="HF batch size = engine slots")
    parser.add_argument(
        "--rows", type=int, default=None,
        help="inputs per run (default 4 x batch: a job hands an engine 256 rows per call, 4x its 64 CPU rows)",
    )
    parser.add_argument("--runs", type=int, default=None, help="timed runs of each, alternating (default 3; 2 for base)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 small (captions are at most 27 tokens), 64 base (GenerationParams default)")
    parser.add_argument("--dtype", default="auto", help="engine dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--no-native", action="store_true",
        help="run the engine's torch step on CPU instead of its native step (native_step.cpp)",
    )
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also time the engine with quantize=int8 (CPU, float32), side by side")
    parser.add_argument(
        "--peer-defaults", action="store_true",
        help="run CTranslate2 with its own defaults (no MKL on AMD CPUs) instead of peer_models.PEER_ENV",
    )
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the untimed peak-memory runs (HF and engine once more each)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="intra-op threads for both engines (default: torch's; Ray actors get OMP_NUM_THREADS=num_cpus)",
    )
    args = parser.parse_args(argv)
    if args.peer:
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            print("--peer ctranslate2 needs ctranslate2: pip install -e .[bench]", file=sys.stderr)
            return 2
        if args.model not in ("bart", "t5"):
            parser.error("--peer runs on --model bart or --model t5")
        args.quantize = "int8"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from combiner_core import GenerationEngine, GenerationParams, resolve_dtype
    from combiner_core.engine import hf_generate

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    peer_family = args.model in ("bart", "t5")
    if peer_family:
        from jobs import peer_models

        combiner = peer_models.bart_base() if args.model == "bart" else peer_models.t5_small()
        eos = combiner.special_token_ids()["eos_token_id"]

        def make_inputs(n: int):
            return peer_models.token_inputs(combiner.model.config.vocab_size, n, eos=eos)
    else:
        combiner, make_inputs = small_model() if args.model == "small" else base_model()
    combiner.to(device=device, dtype=dtype)  # HF runs in the engine's dtype too
    rows = args.rows or (128 if peer_family else 4 * args.batch)
    runs = args.runs or (3 if args.model == "small" else 2)
    max_new = args.max_new_tokens or (32 if args.model == "small" else 64)
    params = GenerationParams(
        strategy=args.strategy, num_beams=args.num_beams if args.strategy == "beam" else 4, max_new_tokens=max_new
    )
    inputs = make_inputs(rows)
    image = args.model == "small"
    model_name = (
        SMALL_MODEL.name if image
        else peer_models.describe(args.model, combiner) if peer_family
        else "bert2bert-base-size-from-minilm (12+12 layers, hidden 768)"
    )
    print(
        f"model {model_name}, {args.strategy}{'-' + str(args.num_beams) if args.strategy == 'beam' else ''}, "
        f"batch {args.batch}, {rows} rows per run, max_new_tokens {max_new}, {device} {dtype}, "
        f"torch threads {torch.get_num_threads()}"
    )

    engine = GenerationEngine(combiner, params, slots=args.batch, dtype=dtype, native=not args.no_native)
    if not engine.fast_path:
        print(f"engine falls back to HF: {engine.fallback_reason}")

    def run_hf(data):
        out = []
        for start in range(0, len(data), args.batch):
            if image:
                batch = {"pixel_values": data[start : start + args.batch]}
            else:
                chunk = data[start : start + args.batch]
                width = max(len(r) for r in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for i, r in enumerate(chunk):
                    ids[i, : len(r)], mask[i, : len(r)] = r, 1
                batch = {"input_ids": ids, "attention_mask": mask}
            out += hf_generate(combiner, batch, params)
        return out

    def run_engine(data, engine=engine):
        return engine.generate_pixels(data) if image else engine.generate_token_ids(data)

    contenders = [("hf", run_hf), ("engine", run_engine)]
    if args.quantize:
        int8 = GenerationEngine(combiner, params, slots=args.batch, dtype=dtype, native=not args.no_native,
                                quantize=args.quantize)
        contenders.append(("int8", lambda data: run_engine(data, int8)))

    peer_env: dict[str, dict[str, str]] = {}
    if args.peer:
        import tempfile

        folder = peer_models.save_for_converter(combiner, Path(tempfile.mkdtemp(prefix="ct2-src-")))
        for compute_type, name in (("float32", "ct2"), ("int8_float32", "ct2int8")):
            peer_env[name] = {} if args.peer_defaults else peer_models.PEER_ENV[compute_type]
            contenders.append((name, peer_models.ctranslate2_runner(
                folder, combiner, params, compute_type=compute_type, threads=torch.get_num_threads(), batch=args.batch,
                env=peer_env[name],
            )))
        print("CTranslate2 runs in child processes, float32 with", peer_env["ct2"] or "its defaults",
              "and int8 with", peer_env["ct2int8"] or "its defaults")

    def timed(fn, data):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(data)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    warm = inputs[: min(rows, args.batch)]
    for _, fn in contenders:
        fn(warm)
    engine.stats = type(engine.stats)()
    totals = {name: [0, 0.0] for name, _ in contenders}
    best = {name: (0, float("inf")) for name, _ in contenders}  # (tokens, seconds) of its fastest run
    int8_same: list[bool] = []
    peer_same: dict[str, list[bool]] = {}
    float_out = None
    identical = True
    max_score_diff = 0.0
    reference = None
    # Timed runs carry no memory sampler: its thread would take the GIL from both sides.
    for run in range(1, runs + 1):
        for name, fn in contenders:
            out, seconds = timed(fn, inputs)
            tokens = sum(c.num_tokens for r in out for c in r)
            totals[name][0] += tokens
            totals[name][1] += seconds
            if seconds < best[name][1]:
                best[name] = (tokens, seconds)
            extra = ""
            if name == "hf":
                reference = out
            elif name.startswith("ct2"):
                same_rows = [[c.token_ids for c in a] == [c.token_ids for c in b] for a, b in zip(out, reference, strict=True)]
                peer_same.setdefault(name, []).extend(same_rows)
                extra = f"  rows with HF's tokens: {sum(same_rows)}/{len(same_rows)}"
            elif name == "int8":
                same_rows = [[c.token_ids for c in a] == [c.token_ids for c in b] for a, b in zip(out, float_out, strict=True)]
                int8_same += same_rows
                extra = f"  rows with the float32 engine's tokens: {sum(same_rows)}/{len(same_rows)}"
            else:
                float_out = out
                same = [[c.token_ids for c in r] for r in out] == [[c.token_ids for c in r] for r in reference]
                identical &= same
                max_score_diff = max(
                    [max_score_diff]
                    + [
                        abs(a.score - b.score)
                        for ra, rb in zip(out, reference, strict=True)
                        for a, b in zip(ra, rb, strict=True)
                    ]
                )
                s = engine.stats
                extra = (
                    f"  decoder efficiency {s.decoder_efficiency:.3f}  encoder efficiency {s.encoder_efficiency:.3f}"
                    f"  outputs identical to HF: {same}"
                )
            print(f"run {run} {name:6s}: {tokens / seconds:9.1f} tokens/s  {seconds:7.2f} s{extra}", flush=True)
    # Then one run each under the memory sampler.
    if device.type == "cpu":
        release_freed_memory_at_once()
    peaks = {}
    for name, fn in () if args.no_memory else (("hf", run_hf), ("engine", run_engine)):
        with PeakMemory(device) as mem:
            fn(inputs)
        peaks[name] = mem.mib
        print(f"memory {name:6s}: peak {mem.mib:8.1f} MiB above the idle process", flush=True)
    lengths = [r[0].num_tokens for r in reference]
    if peer_family:
        hist: dict[int, int] = {}
        for n in lengths:
            hist[n // 8 * 8] = hist.get(n // 8 * 8, 0) + 1
        print("output lengths (HF, first output of each row), in bins of 8 tokens: "
              + ", ".join(f"{k}-{k + 7}: {v}" for k, v in sorted(hist.items())))
    hf_rate = totals["hf"][0] / totals["hf"][1]
    engine_rate = totals["engine"][0] / totals["engine"][1]
    mean = statistics.mean(lengths)
    rate = {name: totals[name][0] / totals[name][1] for name in totals}
    peer = {}
    if args.peer:
        peer = {
            "ratio_vs_peer_fp32": round(engine_rate / rate["ct2"], 3),
            "ratio_vs_peer_int8": round(rate["int8"] / rate["ct2int8"], 3),
            "ratio_vs_hf": round(engine_rate / hf_rate, 3),
            "outputs_identical_to_hf": identical,
            "int8_rows_equal_fp32": round(sum(int8_same) / len(int8_same), 4),
            "peer_rows_equal_hf": round(sum(peer_same["ct2"]) / len(peer_same["ct2"]), 4),
            "peer_int8_rows_equal_hf": round(sum(peer_same["ct2int8"]) / len(peer_same["ct2int8"]), 4),
            "peer": f"ctranslate2 {ctranslate2.__version__}",
            "peer_env": {"float32": peer_env["ct2"], "int8": peer_env["ct2int8"]},
            # rows/s: the same rows in every run, so seconds against seconds. Tokens/s counts
            # each contender's own outputs, which differ where its outputs do (CTranslate2's
            # beam search ends rows elsewhere than HF's): the two ratios can disagree.
            "rows_ratio_vs_peer_fp32": round(totals["ct2"][1] / totals["engine"][1], 3),
            "rows_ratio_vs_peer_int8": round(totals["ct2int8"][1] / totals["int8"][1], 3),
            "peer_fp32_tokens_per_s": round(rate["ct2"], 1),
            "peer_int8_tokens_per_s": round(rate["ct2int8"], 1),
            "engine_int8_tokens_per_s": round(rate["int8"], 1),
            # The same ratios from each contender's fastest run: other processes on the
            # machine only ever slow a run down, and one slowed run (CTranslate2 took 27.7
            # then 36.6 s for the same BART rows) moves the pooled ratios by 10-15%.
            "best_run": {
                "ratio_vs_peer_fp32": round(best["engine"][0] / best["engine"][1] / (best["ct2"][0] / best["ct2"][1]), 3),
                "ratio_vs_peer_int8": round(best["int8"][0] / best["int8"][1] / (best["ct2int8"][0] / best["ct2int8"][1]), 3),
                "ratio_vs_hf": round(best["engine"][0] / best["engine"][1] / (best["hf"][0] / best["hf"][1]), 3),
                "rows_ratio_vs_peer_fp32": round(best["ct2"][1] / best["engine"][1], 3),
                "rows_ratio_vs_peer_int8": round(best["ct2int8"][1] / best["int8"][1], 3),
            },
        }
    result = {
        **peer,
        "ratio": round(engine_rate / hf_rate, 3),
        **({
            "int8_tokens_per_s": round(totals["int8"][0] / totals["int8"][1], 1),
            "int8_over_engine": round(totals["int8"][0] / totals["int8"][1] / engine_rate, 3),
            "int8_rows_identical_to_float": round(sum(int8_same) / len(int8_same), 4),
        } if args.quantize else {}),
        "hf_tokens_per_s": round(hf_rate, 1),
        "engine_tokens_per_s": round(engine_rate, 1),
        "decoder_efficiency": round(engine.stats.decoder_efficiency, 4),
        "encoder_efficiency": round(engine.stats.encoder_efficiency, 4),
        "outputs_identical": identical,
        "max_score_diff": float(f"{max_score_diff:.3g}"),
        "output_lengths": {
            "min": min(lengths),
            "median": statistics.median(lengths),
            "max": max(lengths),
            "mean": round(mean, 2),
            "max_over_mean": round(max(lengths) / mean, 3),
        },
        "hf_peak_mib": round(peaks["hf"], 1) if peaks else None,
        "engine_peak_mib": round(peaks["engine"], 1) if peaks else None,
        "model": model_name,
        "strategy": args.strategy if args.strategy == "greedy" else f"beam-{args.num_beams}",
        "batch": args.batch,
        "rows_per_run": rows,
        "runs": runs,
        "max_new_tokens": max_new,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "fast_path": engine.fast_path,
        "native_step": engine.native_step,
        "threads": torch.get_num_threads(),
    }
    print(f"HF {hf_rate:.1f} tokens/s, engine {engine_rate:.1f} tokens/s: ratio {result['ratio']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
