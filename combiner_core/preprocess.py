"""Turning raw inputs (text, image bytes) into model inputs, one row at a time.

Row-level functions raise `InputError` subclasses with a `cause`, so a batch job
can route a bad row to its errors table and go on. Collation pads rows into the
tensors a batch needs.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, TextInputError

if TYPE_CHECKING:
    # torch and transformers are imported where they are used: decoding images needs
    # neither, and a CPU worker that only decodes images saves the seconds they take
    # to import (see combiner_core.images.fused_image_processor_from_config).
    import torch
    from transformers import PreTrainedTokenizerBase

# 64 megapixels: a 8000x8000 photo passes, a crafted 100k x 100k PNG (a
# "decompression bomb", 40 GB as RGB) is refused before its pixels are decoded.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class TokenizedText:
    """One tokenized input.

    Attributes:
        input_ids: token ids, special tokens included, after truncation.
        num_tokens: len(input_ids).
        original_num_tokens: length before truncation.
        truncated: True when tokens were cut to fit the model.
    """

    input_ids: list[int]
    num_tokens: int
    original_num_tokens: int
    truncated: bool


def text_from_bytes(data: bytes) -> str:
    """UTF-8 decode with a row-level error instead of UnicodeDecodeError."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextInputError(
            f"text is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); "
            "re-encode the source as UTF-8",
            cause="not_utf8",
        ) from exc


def tokenize_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str | bytes | None,
    *,
    max_tokens: int | None,
    truncation: bool = True,
) -> TokenizedText:
    """Tokenize one input, truncating to `max_tokens` and reporting whether it did.

    With truncation off, an input longer than `max_tokens` raises TextInputError
    (cause "too_long") rather than being cut silently.
    """
    if isinstance(text, bytes):
        text = text_from_bytes(text)
    if text is None or not isinstance(text, str):
        raise TextInputError(f"expected text, got {type(text).__name__}", cause="not_text")
    if not text.strip():
        raise TextInputError(
            "text is empty or whitespace-only; there is nothing to generate from",
            cause="empty_text",
        )
    ids = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    original = len(ids)
    if max_tokens is not None and original > max_tokens:
        if not truncation:
            raise TextInputError(
                f"text has {original} tokens, more than the model's limit of {max_tokens}; "
                "enable truncation or split the document",
                cause="too_long",
            )
        ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    return TokenizedText(
        input_ids=list(ids), num_tokens=len(ids), original_num_tokens=original, truncated=len(ids) < original
    )


def pad_sequences(
    rows: Sequence[Sequence[int]], *, value: int, pad_to_multiple_of: int | None = None
) -> torch.Tensor:
    """Right-pad int lists with `value` into one (batch, longest) long tensor."""
    import torch

    if not rows:
        raise ValueError("pad_sequences needs at least one row")
    longest = max(len(r) for r in rows)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row if isinstance(row, torch.Tensor) else torch.as_tensor(list(row), dtype=torch.long)
    return out


def collate_token_ids(
    rows: Sequence[Sequence[int]], *, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into input_ids and attention_mask tensors."""
    import torch

    input_ids = pad_sequences(rows, value=pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    lengths = torch.tensor([len(r) for r in rows])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tokenize_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_tokens: int | None,
    truncation: bool = True,
) -> tuple[dict[str, torch.Tensor], list[TokenizedText]]:
    """Tokenize and pad a batch of good texts (raises on the first bad one)."""
    rows = [tokenize_text(tokenizer, t, max_tokens=max_tokens, truncation=truncation) for t in texts]
    batch = collate_token_ids([r.input_ids for r in rows], pad_token_id=_pad_id(tokenizer))
    return batch, rows


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit integer or float greyscale: scale the used range to 8 bits rather
        # than clipping, which would turn most 16-bit scans white.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high == low else (array - low) * (255.0 / (high - low))
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels over white, as a viewer shows them; black (the raw
        # RGB under alpha 0) would change what a captioner sees.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


# Guards PIL's process-wide MAX_IMAGE_PIXELS while decode_image lifts it around an open.
_PIL_LIMIT_LOCK = threading.Lock()


def decode_image(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB PIL image.

    Applies the EXIF orientation, converts L / LA / RGBA / CMYK / P / 16-bit
    images to RGB, takes the first frame of animations, and refuses images over
    `max_pixels` before decoding their pixels. Raises ImageDecodeError with cause
    "empty_image", "corrupt_image", "unknown_format" or "too_large".
    """
    return finish_image(open_image(data, max_pixels=max_pixels))


def open_image(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """The first half of `decode_image`: the header read and checked, no pixels decoded.

    Between the two halves a caller may ask a JPEG for a reduced decode (`Image.draft`).
    """
    if data is None or len(data) == 0:
        raise ImageDecodeError("image is zero bytes; the file is empty or was not uploaded", cause="empty_image")
    try:
        with warnings.catch_warnings(), _PIL_LIMIT_LOCK:
            # PIL warns above its MAX_IMAGE_PIXELS and raises above twice that; our own
            # check below (header only, before any pixel is decoded) is the limit that
            # counts, so that a caller may raise it past PIL's.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"bytes are not an image format PIL can read (starts with {bytes(data[:8])!r})",
            cause="unknown_format",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(str(exc), cause="too_large") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken headers
        raise ImageDecodeError(f"image header is corrupt: {exc}", cause="corrupt_image") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "raise max_pixels (a job's input.max_pixels) if such images are expected",
            cause="too_large",
        )
    return image


def finish_image(image: Image.Image) -> Image.Image:
    """The second half of `decode_image`: pixels decoded, EXIF orientation applied, RGB."""
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageDecodeError(
            f"image data is corrupt or truncated ({type(exc).__name__}: {exc})",
            cause="corrupt_image",
        ) from exc


def image_to_pixel_values(image_processor: object, images: Sequence[Image.Image]) -> torch.Tensor:
    """Run the image processor on decoded RGB images; returns pixel_values (N, C, H, W)."""
    out = image_processor(images=list(images), return_tensors="pt")
    return out["pixel_values"]
