"""Shapes with one to three objects: a captioning set whose captions vary in length.

Each 64x64 picture holds 1, 2 or 3 shapes in distinct quadrants; its caption names
them in reading order (top left, top right, bottom left, bottom right), joined by
"and": "a small red circle in the top left and a large blue square in the bottom
right". Captions are 10, 20 or 30 tokens with EOS, drawn 45% / 30% / 25%, so a model
trained on it decides its own output length from the picture: what the generation
benchmark (jobs/benchmark_generation.py) needs to compare engines on realistic,
varied lengths. Deterministic: the same arguments always give the same bytes.

    python -m pipelines.demo_data.multishape [--out data/multishape] [--train 8000] [--eval 300] [--heldout 500]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipelines.demo_data.shapes import COLORS, IMAGE_SIZE, SHAPES, SIZES, caption_words, draw_on  # noqa: E402

QUADRANTS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))
COUNT_WEIGHTS = {1: 0.45, 2: 0.30, 3: 0.25}
SPLIT_SEEDS = {"train": 11, "eval": 12, "heldout": 13}
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("caption", pa.string())])


def words() -> list[str]:
    """The caption vocabulary: the single-shape words plus "and"."""
    return sorted({*caption_words(), "and"})


def example(rng: random.Random) -> tuple[bytes, str]:
    """One picture (PNG bytes) and its caption."""
    count = rng.choices(list(COUNT_WEIGHTS), weights=list(COUNT_WEIGHTS.values()))[0]
    quadrants = sorted(rng.sample(range(len(QUADRANTS)), count))
    shade = rng.randint(235, 255)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, rng.randint(225, 255)))
    draw = ImageDraw.Draw(image)
    parts = []
    for q in quadrants:
        row, column = QUADRANTS[q]
        color, shape, size = rng.choice(sorted(COLORS)), rng.choice(SHAPES), rng.choice(sorted(SIZES))
        draw_on(draw, color=color, shape=shape, size=size, row=row, column=column, rng=rng)
        parts.append(f"a {size} {color} {shape} in the {row} {column}")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue(), " and ".join(parts)


def iter_examples(split: str, count: int) -> Iterator[dict[str, object]]:
    rng = random.Random(SPLIT_SEEDS[split])
    for i in range(count):
        png, caption = example(rng)
        yield {"id": f"{split}-{i:06d}", "image": png, "caption": caption}


def write_split(folder: Path, split: str, count: int, *, rows_per_file: int = 1000) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    rows = list(iter_examples(split, count))
    for k in range(0, len(rows), rows_per_file):
        pq.write_table(pa.Table.from_pylist(rows[k : k + rows_per_file], schema=SCHEMA), folder / f"part-{k // rows_per_file:05d}.parquet")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "data" / "multishape"))  # the shipped spec reads it there
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=500)
    args = parser.parse_args(argv)
    out = Path(args.out)
    for split, count in (("train", args.train), ("eval", args.eval), ("heldout", args.heldout)):
        print(f"{split}: {write_split(out / split, split, count)} rows under {out / split}")
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(words()) + "\n")
    print(f"vocabulary: {vocab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
