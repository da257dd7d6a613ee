"""Regenerate the bundled sample (jobs/sample/*.parquet) and the demo captioner.

    .venv/bin/python jobs/sample/make_sample.py            # sample shards only
    .venv/bin/python jobs/sample/make_sample.py --model    # also models/demo-captioner/

The sample is deterministic: simple shape pictures (circle, square, triangle in four
colours, two sizes, left or right) drawn with PIL, each with its true caption, e.g.
"a large red circle on the left". The demo captioner is a tiny random-weight
ViT + GPT-2 combiner over the sample's words: it runs the pipeline end to end until
a fine-tuned captioner replaces it (its captions are noise, by design).
"""

from __future__ import annotations

import argparse
import io
import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 14, "large": 26}
SIDES = ("left", "right")
WORDS = ["a", "the", "on", "of", "image", *COLORS, *SHAPES, *SIZES, *SIDES, "top", "bottom"]
IMAGE_SIDE = 64


def draw(shape: str, color: str, size: str, side: str) -> bytes:
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (245, 245, 245))
    d = ImageDraw.Draw(image)
    r = SIZES[size]
    cx = IMAGE_SIDE // 4 if side == "left" else 3 * IMAGE_SIDE // 4
    cy = IMAGE_SIDE // 2
    box = (cx - r // 2 - 2, cy - r // 2, cx + r // 2 - 2, cy + r // 2)
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def sample_rows() -> list[dict]:
    rows = []
    for i, (shape, color, size, side) in enumerate(itertools.product(SHAPES, COLORS, SIZES, SIDES)):
        rows.append(
            {
                "id": f"shape-{i:03d}",
                "image": draw(shape, color, size, side),
                "caption": f"a {size} {color} {shape} on the {side}",
            }
        )
    return rows


def write_sample(folder: Path = HERE, shards: int = 2) -> list[Path]:
    rows = sample_rows()
    per = -(-len(rows) // shards)
    paths = []
    for k in range(shards):
        chunk = rows[k * per : (k + 1) * per]
        path = folder / f"shapes-{k:02d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk), path)
        paths.append(path)
    return paths


def write_demo_model(folder: Path = REPO / "models" / "demo-captioner") -> None:
    from transformers import GPT2Config, ViTConfig
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from combiner_core import build_word_tokenizer, random_combiner, save_combiner

    tok = build_word_tokenizer(WORDS, model_max_length=32)
    tok.add_special_tokens({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    tok.pad_token = None
    encoder = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=0.5,
    )
    decoder = GPT2Config(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        n_embd=32, n_layer=2, n_head=4, n_positions=32, initializer_range=0.5,
    )
    combiner = random_combiner(
        encoder_config=encoder, decoder_config=decoder, decoder_tokenizer=tok,
        image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}), seed=0,
    )
    save_combiner(combiner, str(folder), extra={"note": "random weights: a stand-in until a fine-tuned captioner lands"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="store_true", help="also write models/demo-captioner/")
    args = parser.parse_args()
    for path in write_sample():
        print("wrote", path)
    if args.model:
        write_demo_model()
        print("wrote", REPO / "models" / "demo-captioner")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
