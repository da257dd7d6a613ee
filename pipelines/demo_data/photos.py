"""Photo-like JPEGs and PNGs of real camera sizes, for benchmarks and image-path tests.

Random noise is not a photo: it compresses to several times a photo's bytes and its
JPEG decode costs more (every DCT block is full). These pictures are smooth colour
fields (a few random colours blended over the frame), sharp-edged shapes and a light
grain, so a 1600x1200 JPEG at quality 90 is a few hundred KB, as a phone photo of
that size is. The same arguments always give the same bytes. No Ray here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Camera sizes the preprocessing benchmark and the photo caption job use: VGA, 2 MP, 12 MP.
PHOTO_SIZES = ((640, 480), (1600, 1200), (4000, 3000))


def photo_like(width: int, height: int, *, seed: int) -> Image.Image:
    """An RGB picture of `width` x `height` with a photo's mix of smooth and sharp content."""
    rng = np.random.default_rng(seed)
    # Smooth light: a 4x3 field of random colours, upsampled with bicubic filtering.
    field = Image.fromarray(rng.integers(30, 226, size=(3, 4, 3), dtype=np.uint8), "RGB")
    image = field.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):  # objects: sharp edges the DCT has to code
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 3)), int(rng.integers(height // 20, height // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
    # Sensor grain of a few levels: what keeps a real photo's JPEG from being tiny.
    grain = rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def photo_bytes(width: int, height: int, *, seed: int, format: str = "JPEG") -> bytes:
    """`photo_like` encoded as a JPEG (quality 90, 4:2:0, as cameras write) or a PNG."""
    buf = io.BytesIO()
    image = photo_like(width, height, seed=seed)
    if format.upper() == "JPEG":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format=format)
    return buf.getvalue()


def write_photo_folder(folder: str | Path, counts: dict[tuple[int, int], int], *, seed: int = 0) -> list[Path]:
    """Write `counts[(width, height)]` JPEGs of each size into `folder`; returns their paths.

    Names sort by size, then index (`1600x1200-0007.jpg`), so a listing is stable.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (width, height), n in counts.items():
        for i in range(n):
            path = out / f"{width}x{height}-{i:04d}.jpg"
            path.write_bytes(photo_bytes(width, height, seed=seed * 1_000_003 + width * 7 + height * 13 + i))
            paths.append(path)
    return paths
