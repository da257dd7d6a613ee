"""Image decoding and text tokenization edge cases."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import tests.support.tiny as tiny
from combiner_core import decode_image, tokenize_text
from combiner_core.errors import ImageDecodeError, TextInputError


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    # A 40x20 image whose EXIF says "rotate 90 CW" (orientation 6) displays as 20x40.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40)
    # After rotating 90 CW the stored left edge is at the top.
    top, bottom = np.asarray(decoded)[2, 10], np.asarray(decoded)[37, 10]
    assert top[2] > 200 and top[0] < 60 and bottom[0] > 200


@pytest.mark.parametrize(
    "make,fmt",
    [
        (lambda: Image.new("L", (8, 8), 128), "PNG"),
        (lambda: Image.new("LA", (8, 8), (128, 255)), "PNG"),
        (lambda: Image.new("RGBA", (8, 8), (10, 20, 30, 255)), "PNG"),
        (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        (lambda: Image.new("RGB", (8, 8), (9, 99, 199)).convert("P"), "GIF"),
        (lambda: Image.new("RGB", (8, 8), (9, 99, 199)), "WEBP"),
        (lambda: Image.new("RGB", (8, 8), (9, 99, 199)), "BMP"),
    ],
)
def test_modes_become_rgb(make, fmt) -> None:
    decoded = decode_image(_encode(make(), fmt))
    assert decoded.mode == "RGB" and decoded.size == (8, 8)


def test_cmyk_colour_survives() -> None:
    red = decode_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    r, g, b = np.asarray(red)[4, 4]
    assert r > 200 and g < 60 and b < 60


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    decoded = decode_image(_encode(image, "PNG"))
    assert np.asarray(decoded).min() == 255


def test_sixteen_bit_greyscale_keeps_contrast() -> None:
    array = np.zeros((4, 8), dtype=np.uint16)
    array[:, 4:] = 4000  # a 16-bit scan using a small part of the range
    decoded = np.asarray(decode_image(_encode(Image.fromarray(array), "PNG")))
    assert decoded[0, 0, 0] == 0 and decoded[0, 7, 0] == 255
    # float greyscale (a 32-bit TIFF, as microscopy and depth maps come): the same stretch
    depth = np.linspace(0.25, 0.5, 16, dtype=np.float32).reshape(2, 8)
    decoded = np.asarray(decode_image(_encode(Image.fromarray(depth, mode="F"), "TIFF")))
    assert decoded.shape == (2, 8, 3) and decoded[0, 0, 0] == 0 and decoded[1, 7, 0] == 255
    assert (decoded[..., 0] == decoded[..., 2]).all() and (np.diff(decoded[..., 0].ravel().astype(int)) >= 0).all()


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(decode_image(data))[0, 0]
    assert r > 200 and g < 50


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (4000, 4000)), "PNG")  # 16 MP, a few KB compressed
    with pytest.raises(ImageDecodeError, match="4000x4000 = 16000000 pixels, over the limit of 1000000") as err:
        decode_image(data, max_pixels=1_000_000)
    assert err.value.cause == "too_large"


def test_truncation_is_reported() -> None:
    tok = tiny.bert_tokenizer()
    text = " ".join(["cat"] * 30)
    short = tokenize_text(tok, "a cat", max_tokens=16)
    assert not short.truncated and short.num_tokens == short.original_num_tokens == 3
    cut = tokenize_text(tok, text, max_tokens=16)
    assert cut.truncated and cut.num_tokens == 16 and cut.original_num_tokens == 31
    assert cut.input_ids[-1] == tok.eos_token_id  # special tokens survive truncation
    with pytest.raises(TextInputError, match="31 tokens, more than the model's limit of 16") as err:
        tokenize_text(tok, text, max_tokens=16, truncation=False)
    assert err.value.cause == "too_long"


def test_the_pixel_limit_is_ours_and_can_be_raised_past_pils() -> None:
    """A PNG header saying 20000 x 20000 (400 MP, past PIL's own refusal at 179 MP) and no
    pixel data: over the default limit it is too_large, before any pixel is decoded; with
    the limit raised, PIL's own check does not stand in the way (the missing data is then
    corrupt_image)."""
    import struct
    import zlib

    from combiner_core import decode_image
    from combiner_core.errors import ImageDecodeError

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    with pytest.raises(ImageDecodeError, match=r"20000x20000 = 400000000 pixels, over the limit of 64000000; raise "
                                               r"max_pixels \(a job's input.max_pixels\)") as exc:
        decode_image(png)
    assert exc.value.cause == "too_large"
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(png, max_pixels=500_000_000)
    assert exc.value.cause == "corrupt_image"
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's own limit is back for everyone else
