"""A deterministic synthetic captioning set: shapes in several colors, sizes and positions.

Each picture is a 64x64 PNG with one shape on a lightly tinted background; its
caption names the size, color, shape and quadrant ("a small red circle in the
top left"). The same seed always gives the same bytes, so splits are
reproducible on any host; the train / eval / held-out splits use different
seeds, so no split's pictures are drawn from another's random stream. No Ray here.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
# Radii in pixels: a quadrant is 32 px wide, so a large shape (up to 13) still
# fits in its quadrant with the +-3 px jitter below, and small (5-7) vs large
# differ by about 2x, visible at the model's 16 px patch size.
SIZES = {"small": (5, 7), "large": (11, 13)}
ROWS = ("top", "bottom")
COLUMNS = ("left", "right")
SPLIT_SEEDS = {"train": 1, "eval": 2, "heldout": 3}


def caption_words() -> list[str]:
    """Every word a caption can contain: the demo tokenizer's vocabulary."""
    return sorted({"a", "in", "the", *COLORS, *SHAPES, *SIZES, *ROWS, *COLUMNS})


def draw_shape(*, color: str, shape: str, size: str, row: str, column: str, rng: random.Random) -> bytes:
    """One PNG: the shape drawn in its quadrant with jittered center, radius and background."""
    shade = rng.randint(235, 255)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, rng.randint(225, 255)))
    draw_on(ImageDraw.Draw(image), color=color, shape=shape, size=size, row=row, column=column, rng=rng)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def draw_on(
    draw: ImageDraw.ImageDraw, *, color: str, shape: str, size: str, row: str, column: str, rng: random.Random
) -> None:
    """Draw one shape in its quadrant with jittered center, radius and color."""
    half = IMAGE_SIZE // 2
    cx = (half // 2 if column == "left" else half + half // 2) + rng.randint(-3, 3)
    cy = (half // 2 if row == "top" else half + half // 2) + rng.randint(-3, 3)
    r = rng.randint(*SIZES[size])
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLORS[color])
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def iter_examples(split: str, count: int) -> Iterator[dict[str, object]]:
    """`count` rows of {id, image (PNG bytes), caption} for `split`, deterministically."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")
    rng = random.Random(SPLIT_SEEDS[split])
    for i in range(count):
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        size, row, column = rng.choice(sorted(SIZES)), rng.choice(ROWS), rng.choice(COLUMNS)
        png = draw_shape(color=color, shape=shape, size=size, row=row, column=column, rng=rng)
        yield {
            "id": f"{split}-{i:06d}",
            "image": png,
            "caption": f"a {size} {color} {shape} in the {row} {column}",
        }


SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("caption", pa.string())])
# The bundled sample also names each picture's shape: the true label for label_dataset.
SAMPLE_SCHEMA = SCHEMA.append(pa.field("shape", pa.string()))


def captions_of(shape: str) -> list[str]:
    """Every caption the generator writes for `shape` (label_dataset's verbalizations)."""
    return [
        f"a {size} {color} {shape} in the {row} {column}"
        for size in sorted(SIZES) for color in sorted(COLORS) for row in ROWS for column in COLUMNS
    ]


def write_split(path: str | Path, split: str, count: int, *, rows_per_file: int = 1000) -> list[Path]:
    """Write a split as Parquet files (id, image, caption) under folder `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    written, batch = [], []
    for row in iter_examples(split, count):
        batch.append(row)
        if len(batch) == rows_per_file:
            written.append(_write(folder, len(written), batch))
            batch = []
    if batch:
        written.append(_write(folder, len(written), batch))
    return written


def _write(folder: Path, index: int, rows: list[dict[str, object]]) -> Path:
    target = folder / f"part-{index:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), target)
    return target


def write_vocabulary(path: str | Path) -> Path:
    """One caption word per line: the words_file of the demo spec's random model."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(caption_words()) + "\n")
    return target


def write_sample(folder: str | Path, *, count: int = 48, shards: int = 2) -> list[Path]:
    """The bundled sample of the main job: the first `count` held-out rows, in `shards` files.

    Same layout as jobs/sample/ (shapes-NN.parquet with id, image, caption, shape),
    drawn from the held-out split that the demo captioner never trained on.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "shape": str(r["caption"]).split()[3]} for r in iter_examples("heldout", count)]
    per = -(-len(rows) // shards)
    paths = []
    for k in range(shards):
        path = folder / f"shapes-{k:02d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k * per : (k + 1) * per], schema=SAMPLE_SCHEMA), path)
        paths.append(path)
    return paths
