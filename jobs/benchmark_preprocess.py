"""Benchmark image preprocessing: the transformers processor against the fused path, side by side.

    python jobs/benchmark_preprocess.py                      # the ViT 224x224 processor and the demo captioner's
    python jobs/benchmark_preprocess.py --rounds 5 --count 12

From image bytes to the float32 tensor the model receives, on one core (this process
pinned to one CPU, torch on one thread), for photo-like JPEGs of 640x480, 1600x1200
and 4000x3000 (pipelines.demo_data.photos: smooth colour fields, sharp shapes and grain,
quality 90: a 2 MP picture is about 400 KB, as a phone photo is) and a set of 640x480
PNGs. Two ways, per set:
- processor: what a job did before: combiner_core.decode_image per image, then the
  checkpoint's image processor (transformers, PIL backend) on the batch;
- fused: combiner_core.images.FusedImageProcessor: JPEG draft decode, one resize and
  crop to uint8 per image (the CPU stage), then `normalize` on the batch (the model
  actor's side; on a GPU it runs there).
Rounds alternate (processor, fused, processor, fused...) after one untimed pass of each,
so load from other processes hits both alike; images/s is images over the best round's
seconds (the least disturbed). Bytes per image are those of one image's pixels as they
cross to the model actor (float32 before, uint8 after).

Processors: `vit224`, a ViT image processor as vit-gpt2 captioners ship it (224x224,
bilinear, mean/std 0.5; the size most vision encoders read), and `demo`, the bundled
demo captioner's (64x64). The headline ratios are vit224's. Pixel differences are in
the model's units (after normalization): `max_abs_pixel_diff` is the fused path as jobs
run it (draft decode on JPEGs) against the processor; `max_abs_pixel_diff_full_decode`
the fused steps without draft (expected 0: same uint8 pixels, same table).

The last line is one JSON object: ratio_640x480, ratio_1600x1200, ratio_4000x3000,
ratio_png (vit224), the same per processor under "by_processor", images/s of each way,
bytes_per_image_before / _after, the pixel differences, and the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

SETS = (("640x480", 640, 480, "JPEG"), ("1600x1200", 1600, 1200, "JPEG"), ("4000x3000", 4000, 3000, "JPEG"),
        ("png", 640, 480, "PNG"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=8, help="images per set (4000x3000: a quarter, at least 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each way per set")
    p.add_argument("--batch", type=int, default=8, help="images per processor call (a job's preprocessing chunk)")
    p.add_argument("--model", default=str(REPO / "models" / "demo-captioner"), help="checkpoint of the `demo` processor")
    return p.parse_args(argv)


def _processors(model: str) -> dict[str, object]:
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from combiner_core import load_preprocessor

    return {
        "vit224": ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        "demo": load_preprocessor(model).image_processor,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as one read task has
    import numpy as np
    import torch

    from combiner_core import decode_image, image_to_pixel_values
    from combiner_core.images import fuse_image_processor
    from pipelines.demo_data.photos import photo_bytes

    torch.set_num_threads(1)
    sets = {}
    for name, width, height, fmt in SETS:
        n = max(2, args.count // 4) if width >= 4000 else args.count
        sets[name] = [photo_bytes(width, height, seed=i, format=fmt) for i in range(n)]
        print(f"set {name}: {n} {fmt} images, {sum(map(len, sets[name])) / n / 1e3:.0f} KB each")

    def processor_way(proc: object, images: list[bytes]) -> torch.Tensor:
        out = [image_to_pixel_values(proc, [decode_image(b) for b in images[i : i + args.batch]])
               for i in range(0, len(images), args.batch)]
        return torch.cat(out)

    def fused_way(fused: object, images: list[bytes]) -> tuple[torch.Tensor, int]:
        out, shipped = [], 0
        for i in range(0, len(images), args.batch):
            uint8 = np.stack([fused.pixels(b) for b in images[i : i + args.batch]])  # CPU stage
            shipped += uint8.nbytes
            out.append(fused.normalize(torch.from_numpy(uint8)))  # model actor
        return torch.cat(out), shipped

    by_processor: dict[str, dict] = {}
    for pname, proc in _processors(args.model).items():
        fused = fuse_image_processor(proc)
        exact = fuse_image_processor(proc, draft=False)
        entry: dict = {"output_size": list(fused.output_size)}
        print(f"\nprocessor {pname}: {type(proc).__name__} -> {fused.output_size[0]}x{fused.output_size[1]}")
        for sname, images in sets.items():
            reference = processor_way(proc, images)  # untimed pass of each: imports, caches
            ours, shipped = fused_way(fused, images)
            full, _ = fused_way(exact, images)
            best = {"processor": float("inf"), "fused": float("inf")}
            for _ in range(args.rounds):
                for way in ("processor", "fused"):
                    start = time.perf_counter()
                    processor_way(proc, images) if way == "processor" else fused_way(fused, images)
                    best[way] = min(best[way], time.perf_counter() - start)
            rates = {way: len(images) / s for way, s in best.items()}
            diff = (ours - reference).abs()
            entry[sname] = {
                "processor_images_per_s": round(rates["processor"], 1),
                "fused_images_per_s": round(rates["fused"], 1),
                "ratio": round(rates["fused"] / rates["processor"], 2),
                "max_abs_pixel_diff": float(diff.max()),
                "mean_abs_pixel_diff": round(float(diff.mean()), 5),
                "max_abs_pixel_diff_full_decode": float((full - reference).abs().max()),
                "bytes_per_image_before": reference[0].numel() * reference.element_size(),
                "bytes_per_image_after": shipped // len(images),
            }
            e = entry[sname]
            print(f"  {sname:10s} processor {e['processor_images_per_s']:7.1f}/s  fused {e['fused_images_per_s']:7.1f}/s"
                  f"  ratio {e['ratio']:5.2f}  pixel diff max {e['max_abs_pixel_diff']:.4f} mean "
                  f"{e['mean_abs_pixel_diff']:.5f} (full decode: {e['max_abs_pixel_diff_full_decode']})  bytes "
                  f"{e['bytes_per_image_before']} -> {e['bytes_per_image_after']}")
        by_processor[pname] = entry
    head = by_processor["vit224"]
    result = {f"ratio_{s}": head[s]["ratio"] for s in sets}
    result.update(
        bytes_per_image_before=head["640x480"]["bytes_per_image_before"],
        bytes_per_image_after=head["640x480"]["bytes_per_image_after"],
        max_abs_pixel_diff=max(e[s]["max_abs_pixel_diff"] for e in by_processor.values() for s in sets),
        max_abs_pixel_diff_full_decode=max(e[s]["max_abs_pixel_diff_full_decode"]
                                           for e in by_processor.values() for s in sets),
        by_processor=by_processor,
        setting={"count": args.count, "rounds": args.rounds, "batch": args.batch, "cores": 1, "torch_threads": 1},
    )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
