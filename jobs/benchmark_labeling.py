"""Benchmark label scoring (LabelScorer) against the naive way, side by side in one process.

    python jobs/benchmark_labeling.py                  # batch 64, K=2 and K=20 topic labels
    python jobs/benchmark_labeling.py --runs 5 --ks 2,5,20
    python jobs/benchmark_labeling.py --reference      # also the pre-trie LabelScorer path

The setting: topic labeling of documents with a text combiner. The model is a MiniLM
warm start (combiner_core.warm_start_combiner, seed 0): MiniLM-L6's weights (the
checkpoint set-up installs) as both encoder and decoder, 6+6 layers, hidden 384, 12
heads, 30522-token vocabulary, random cross-attention. Only speed and equality are
measured, so untrained cross-attention is fine; its cost is that of a trained one.
Inputs are synthetic documents of --min-tokens..--max-tokens encoder tokens (default
192..320, about 256 on average: the first few hundred tokens of a news article), drawn
with a fixed seed. The labels are the first K of 20 news topics of 1-3 words, several
sharing a first word ("world news" / "world politics", "climate" / "climate change"),
1 to 3 decoder tokens plus eos each.

Two ways score the same --rows inputs (default: one batch of --batch = 64) per run:
- naive: for each label, one full forward of the model (encoder included) on the batch
  with that verbalization as `labels` (model(input_ids, attention_mask, labels=...)),
  log-softmax of its logits, the label tokens' log-probs summed per row: K full passes
  per row, batched over the rows;
- fast: LabelScorer.score_token_ids (combiner_core.labels: encoder once per input in
  length buckets, cross-attention K/V once per input and layer, one decoder forward
  over the verbalizations' trie).
Runs alternate (naive, fast, naive, fast...) after one untimed warm-up of each on a few
rows, so load from other processes hits both alike; rows/s is rows over the summed
seconds of a way's runs (wall clock; on a shared machine the long naive runs catch more
of other processes' load than the short fast ones, so the ratio per second of this
process's CPU time is printed beside it, as cpu_ratio). Both must pick the same label for every row and give
log-probs within 1e-4 of each other (exit status 1 otherwise).

The last line is one JSON object: k (the largest K), ratio (fast rows/s over naive
rows/s at that K), fast_rows_per_s, naive_rows_per_s, the same per K under
"by_k", k2_ratio / k2_fast_rows_per_s / k2_naive_rows_per_s when K=2 ran, the checks,
decoder positions per row, and the setting (model size, input and label token lengths).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

TOPICS = [
    "world news", "world politics", "business", "business and finance", "science", "science and technology",
    "health", "health care", "sports", "sports results", "entertainment", "music", "film and television",
    "travel", "food and drink", "education", "climate", "climate change", "weather", "crime and law",
]
WORDS = (
    "the a of and to in is was for on that with as by at from it this be are have not or one all were when there "
    "can an which their if has more time will about would they year new city school river music world report market "
    "water family night house game team people state work group system company summer history north south early "
    "light power government election minister bank shares profit research study patients hospital doctors match "
    "season players film album concert flight hotel recipe students teachers climate storm rain police court"
).split()
TOLERANCE = 1e-4


def build_model():
    from combiner_core import warm_start_combiner
    from jobs.make_demo_data import minilm_folder

    folder = str(minilm_folder())
    combiner = warm_start_combiner(encoder_uri=folder, decoder_uri=folder, seed=0)
    combiner.model.eval()
    return combiner


def documents(tokenizer, n: int, lo: int, hi: int, seed: int):
    """n token-id rows of lo..hi tokens ([CLS] ... [SEP]) from random words, fixed seed."""
    import torch

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target = rng.randint(lo, hi)
        words = [rng.choice(WORDS) for _ in range(target)]
        ids = tokenizer(" ".join(words), truncation=True, max_length=target)["input_ids"]
        rows.append(torch.tensor(ids))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="rows per model call (both ways)")
    parser.add_argument("--rows", type=int, default=None, help="rows per run (default: --batch)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each way per K, alternating")
    parser.add_argument("--ks", default="2,20", help="label counts K, comma-separated (at most 20)")
    parser.add_argument("--min-tokens", type=int, default=192)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action="store_true", help="also time the pre-trie path (HF decoder on every pair)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    if any(not 1 <= k <= len(TOPICS) for k in ks):
        raise SystemExit(f"--ks: each K in 1..{len(TOPICS)}")

    import torch
    import torch.nn.functional as F

    from combiner_core import LabelScorer, LabelSet
    from combiner_core.preprocess import collate_token_ids

    combiner = build_model()
    model, tokenizer = combiner.model, combiner.tokenizer
    rows_per_run = args.rows or args.batch
    inputs = documents(tokenizer, rows_per_run, args.min_tokens, args.max_tokens, args.seed)
    lengths = [len(r) for r in inputs]
    params = sum(p.numel() for p in model.parameters())
    enc_params = sum(p.numel() for p in model.encoder.parameters())
    pad = combiner.preprocessor.input_pad_token_id
    print(
        f"model: MiniLM-L6 warm start bert2bert, {params / 1e6:.1f}M parameters ({enc_params / 1e6:.1f}M encoder), "
        f"6+6 layers, hidden 384, vocab {model.config.decoder.vocab_size}; {model.device} {model.dtype}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"inputs: {rows_per_run} rows per run, batch {args.batch}, {min(lengths)}..{max(lengths)} tokens "
        f"(mean {statistics.mean(lengths):.0f}); {args.runs} runs per way and K, alternating"
    )

    def batches(rows):
        for s in range(0, len(rows), args.batch):
            yield rows[s : s + args.batch]

    def naive(scorer: LabelScorer, rows) -> list[list[float]]:
        """K full forward passes per row (batched over rows): model(inputs, labels=verbalization)."""
        out: list[list[float]] = []
        with torch.inference_mode():
            for chunk in batches(rows):
                batch = collate_token_ids([r.tolist() for r in chunk], pad_token_id=pad)
                per_label = []
                for seq in scorer.sequences:
                    labels = torch.tensor([seq] * len(chunk))
                    logits = model(**batch, labels=labels, decoder_attention_mask=torch.ones_like(labels)).logits
                    logp = F.log_softmax(logits, dim=-1).gather(-1, labels[..., None])[..., 0]
                    per_label.append(logp.double().sum(-1))
                out += torch.stack(per_label, dim=1).tolist()
        return out

    def fast(scorer: LabelScorer, rows) -> list[list[float]]:
        out = []
        for chunk in batches(rows):
            out += [[v for vs in s.verbalization_logprobs for v in vs] for s in scorer.score_token_ids(chunk)]
        return out

    def reference(scorer: LabelScorer, rows) -> list[list[float]]:
        scorer = reference_scorer  # its own stats: the figures below are the fast path's
        out = []
        with torch.inference_mode():
            for chunk in batches(rows):
                batch = collate_token_ids([r.tolist() for r in chunk], pad_token_id=pad)
                out += [[v for vs in s.verbalization_logprobs for v in vs] for s in scorer._score(batch)]
        return out

    ways = {"naive": naive, "fast": fast}
    if args.reference:
        ways["reference"] = reference
    by_k: dict[int, dict] = {}
    ok = True
    for k in ks:
        label_set = LabelSet.from_spec(TOPICS[:k])
        scorer = LabelScorer(combiner, label_set)
        reference_scorer = LabelScorer(combiner, label_set)
        if not scorer.fast_path:
            print(f"label scoring falls back to the reference: {scorer.fallback_reason}")
        label_tokens = [len(s) for s in scorer.sequences]
        print(
            f"\nK={k}: labels {list(label_set.names)}\n  decoder tokens per label (eos included): {label_tokens}; "
            f"trie nodes {scorer.trie.nodes} (K x longest {k * max(label_tokens)}, sum {sum(label_tokens)})"
        )
        for fn in ways.values():  # warm-up, untimed
            fn(scorer, inputs[:4])
        scorer.stats = type(scorer.stats)()
        seconds = {name: 0.0 for name in ways}
        cpu_seconds = {name: 0.0 for name in ways}
        results: dict[str, list[list[float]]] = {}
        for run in range(1, args.runs + 1):
            for name, fn in ways.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                results[name] = fn(scorer, inputs)
                took, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                seconds[name] += took
                cpu_seconds[name] += cpu
                print(f"  run {run} {name:9s}: {len(inputs) / took:8.2f} rows/s  {took:7.2f} s  (process CPU {cpu:7.2f} s)")
        rates = {name: args.runs * len(inputs) / s for name, s in seconds.items()}
        cpu_rates = {name: args.runs * len(inputs) / s for name, s in cpu_seconds.items()}
        checks = {}
        for other in [n for n in ways if n != "naive"]:
            pairs = zip(results[other], results["naive"], strict=True)
            diff = max(abs(a - b) for ra, rb in pairs for a, b in zip(ra, rb, strict=True))
            same = [max(range(k), key=r.__getitem__) for r in results[other]] == [
                max(range(k), key=r.__getitem__) for r in results["naive"]
            ]
            checks[other] = (same, diff)
            good = same and diff <= TOLERANCE
            ok &= good
            print(f"  {other} vs naive: same argmax label for every row: {same}; max |log-prob diff| {diff:.2e}"
                  f"{'' if good else '  FAILED (tolerance ' + str(TOLERANCE) + ')'}")
        s = scorer.stats
        fast_positions = s.decoder_positions / s.rows
        naive_positions = sum(label_tokens)  # one pass per label over its own tokens
        ratio = rates["fast"] / rates["naive"]
        cpu_ratio = cpu_rates["fast"] / cpu_rates["naive"]
        print(f"  K={k}: fast {rates['fast']:.2f} rows/s, naive {rates['naive']:.2f} rows/s: ratio {ratio:.2f}"
              + (f" (reference {rates['reference']:.2f} rows/s)" if "reference" in rates else "")
              + f"; per process CPU second: ratio {cpu_ratio:.2f}")
        print(f"  decoder positions per row: fast {fast_positions:.0f} (trie nodes), naive {naive_positions} "
              f"(K passes); encoder runs per row: fast {s.encoder_runs / s.rows:.0f}, naive {k}")
        entry = {
            "ratio": round(ratio, 2),
            "fast_rows_per_s": round(rates["fast"], 2),
            "naive_rows_per_s": round(rates["naive"], 2),
            "cpu_ratio": round(cpu_ratio, 2),
            "same_argmax": checks["fast"][0],
            "max_logprob_diff": float(f"{checks['fast'][1]:.3g}"),
            "label_tokens": label_tokens,
            "decoder_positions_per_row": {"fast": round(fast_positions), "naive": naive_positions},
        }
        if "reference" in rates:
            entry["reference_rows_per_s"] = round(rates["reference"], 2)
            entry["reference_cpu_ratio"] = round(cpu_rates["fast"] / cpu_rates["reference"], 2)
        by_k[k] = entry

    top = max(ks)
    result = {
        "k": top,
        "ratio": by_k[top]["ratio"],
        "fast_rows_per_s": by_k[top]["fast_rows_per_s"],
        "naive_rows_per_s": by_k[top]["naive_rows_per_s"],
    }
    if 2 in by_k:
        result.update(
            k2_ratio=by_k[2]["ratio"], k2_fast_rows_per_s=by_k[2]["fast_rows_per_s"],
            k2_naive_rows_per_s=by_k[2]["naive_rows_per_s"],
        )
    result.update(
        checks_passed=ok,
        tolerance=TOLERANCE,
        by_k={str(k): v for k, v in by_k.items()},
        batch=args.batch,
        rows_per_run=rows_per_run,
        runs=args.runs,
        model="MiniLM-L6 warm-start bert2bert (6+6 layers, hidden 384, random cross-attention)",
        parameters_m=round(params / 1e6, 1),
        input_tokens={"min": min(lengths), "mean": round(statistics.mean(lengths), 1), "max": max(lengths)},
        device=str(model.device),
        dtype=str(model.dtype).replace("torch.", ""),
        torch_threads=torch.get_num_threads(),
        fast_path=scorer.fast_path,
    )
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
