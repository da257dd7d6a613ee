"""Benchmark the generation engine against transformers' generate, side by side in one process.

    python jobs/benchmark_generation.py                                # small captioner, greedy, batch 32
    python jobs/benchmark_generation.py --strategy beam                # beam search, 4 beams
    python jobs/benchmark_generation.py --model base --strategy beam   # 12+12 layers, hidden 768
    python jobs/benchmark_generation.py --batch 128

Both paths get the same model, inputs and GenerationParams. HF runs `generate` on
batches of --batch inputs (combiner_core.hf_generate: what combiner_core.generate did
before the engine); the engine is built once, as an actor builds it, with --batch
slots, and is handed all --rows inputs per run (a block several times the slot count).
Runs alternate (HF, engine, HF, engine...) after one untimed warm-up each, so load
from other processes hits both alike. Per run it prints tokens/s and peak memory
(resident set above the idle process on CPU, sampled every 2 ms with glibc returning
freed tensors to the OS; max allocated on CUDA), and for the engine its decoder
efficiency (share of computed decoder positions that belonged to unfinished rows)
and encoder efficiency (share of encoder positions that were not padding).

Output lengths come from the models' own EOS decisions: the small model is
models/multishape-captioner (ViT + GPT-2 trained on pictures of one to three shapes,
captions of 9/18/27 tokens); the base model is a random bert2bert of BERT-base size
(seed 0, MiniLM's vocabulary) whose [SEP] logit carries a fixed bias, so its greedy
outputs end anywhere from the first to the last step.

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

# Freed tensors go back to the OS at once, so the resident set tracks live memory and
# the peak of one run does not hide in the allocator's free lists for the next.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

SMALL_MODEL = REPO / "models" / "multishape-captioner"
BASE_EOS_BIAS = 88.0  # [SEP] logit bias of the random base model (see base_model)
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
            f"{SMALL_MODEL} is missing: python -m jobs.demo_data.multishape && "
            "python jobs/finetune.py --spec jobs/specs/finetune_multishape_captioner.yaml"
        )
    combiner = load_combiner(str(SMALL_MODEL))
    from io import BytesIO

    from PIL import Image

    from jobs.demo_data.multishape import iter_examples

    def inputs(n: int):
        images = [Image.open(BytesIO(row["image"])).convert("RGB") for row in iter_examples("heldout", n)]
        return image_to_pixel_values(combiner.image_processor, images)

    return combiner, inputs


def base_model():
    """A random BERT-base-size bert2bert (12 + 12 layers, hidden 768) over MiniLM's vocabulary.

    Seed 0. The decoder is drawn with initializer_range 1.0: at BERT's 0.02 a random
    decoder repeats one token forever, while large weights make it wander from token
    to token as a trained one does. Its [SEP] logit carries +BASE_EOS_BIAS (logits
    spread over about +-100 at this init), so each output ends when the model's own
    [SEP] logit wins: after 2 tokens for some inputs, 10-20 for others, never within
    48 for some (nothing is forced).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig

    from combiner_core import random_combiner
    from jobs.make_demo_data import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    config = dict(
        model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
    )
    combiner = random_combiner(
        encoder_config=config, decoder_config=dict(config, initializer_range=1.0), decoder_tokenizer=tokenizer, seed=0
    )
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
            time.sleep(0.002)

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
    parser.add_argument("--model", choices=["small", "base"], default="small")
    parser.add_argument("--strategy", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="HF batch size = engine slots")
    parser.add_argument("--rows", type=int, default=None, help="inputs per run (default 4 x batch)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each, alternating")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 small, 48 base")
    parser.add_argument("--dtype", default="auto", help="engine dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)

    import torch

    from combiner_core import GenerationEngine, GenerationParams, hf_generate, resolve_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    combiner, make_inputs = small_model() if args.model == "small" else base_model()
    combiner.to(device=device, dtype=dtype)  # HF runs in the engine's dtype too
    rows = args.rows or 4 * args.batch
    max_new = args.max_new_tokens or (32 if args.model == "small" else 48)
    params = GenerationParams(
        strategy=args.strategy, num_beams=args.num_beams if args.strategy == "beam" else 4, max_new_tokens=max_new
    )
    inputs = make_inputs(rows)
    image = args.model == "small"
    model_name = SMALL_MODEL.name if image else "bert-base-size-random (12+12 layers, hidden 768)"
    print(
        f"model {model_name}, {args.strategy}{'-' + str(args.num_beams) if args.strategy == 'beam' else ''}, "
        f"batch {args.batch}, {rows} rows per run, max_new_tokens {max_new}, {device} {dtype}, "
        f"torch threads {torch.get_num_threads()}"
    )

    engine = GenerationEngine(combiner, params, slots=args.batch, dtype=dtype)
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

    def run_engine(data):
        return engine.generate_pixels(data) if image else engine.generate_token_ids(data)

    def timed(fn, data):
        with PeakMemory(device) as mem:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(data)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        return out, seconds, mem.mib

    warm = inputs[: min(rows, args.batch)]
    run_hf(warm)
    run_engine(warm)
    engine.stats = type(engine.stats)()
    totals = {"hf": [0, 0.0, 0.0], "engine": [0, 0.0, 0.0]}
    identical = True
    max_score_diff = 0.0
    reference = None
    for run in range(1, args.runs + 1):
        for name, fn in (("hf", run_hf), ("engine", run_engine)):
            out, seconds, mib = timed(fn, inputs)
            tokens = sum(c.num_tokens for r in out for c in r)
            totals[name][0] += tokens
            totals[name][1] += seconds
            totals[name][2] = max(totals[name][2], mib)
            extra = ""
            if name == "hf":
                reference = out
            else:
                same = [[c.token_ids for c in r] for r in out] == [[c.token_ids for c in r] for r in reference]
                identical &= same
                max_score_diff = max(
                    [max_score_diff] + [abs(a.score - b.score) for ra, rb in zip(out, reference) for a, b in zip(ra, rb)]
                )
                s = engine.stats
                extra = (
                    f"  decoder efficiency {s.decoder_efficiency:.3f}  encoder efficiency {s.encoder_efficiency:.3f}"
                    f"  outputs identical to HF: {same}"
                )
            print(f"run {run} {name:6s}: {tokens / seconds:9.1f} tokens/s  {seconds:7.2f} s  peak {mib:8.1f} MiB{extra}")
    lengths = [r[0].num_tokens for r in reference]
    hf_rate = totals["hf"][0] / totals["hf"][1]
    engine_rate = totals["engine"][0] / totals["engine"][1]
    mean = statistics.mean(lengths)
    result = {
        "ratio": round(engine_rate / hf_rate, 3),
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
        "hf_peak_mib": round(totals["hf"][2], 1),
        "engine_peak_mib": round(totals["engine"][2], 1),
        "model": model_name,
        "strategy": args.strategy if args.strategy == "greedy" else f"beam-{args.num_beams}",
        "batch": args.batch,
        "rows_per_run": rows,
        "runs": args.runs,
        "max_new_tokens": max_new,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "fast_path": engine.fast_path,
    }
    print(f"HF {hf_rate:.1f} tokens/s, engine {engine_rate:.1f} tokens/s: ratio {result['ratio']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
