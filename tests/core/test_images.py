"""The fused image path (combiner_core.images) against the transformers processors it follows."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers.models.beit.image_processing_pil_beit import BeitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from combiner_core import (
    decode_image,
    encode_images,
    fuse_image_processor,
    generate,
    image_to_pixel_values,
    load_combiner,
    load_preprocessor,
    model_pixel_values,
)
from combiner_core.errors import ImageDecodeError
from combiner_core.images import UnsupportedImageProcessor, fused_image_processor
from pipelines.demo_data.photos import photo_bytes, photo_like

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo-captioner"


def _processors() -> dict[str, object]:
    return {
        "demo": load_preprocessor(str(DEMO)).image_processor,  # ViT 64x64, bilinear, mean/std 0.5
        "vit224": ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        # CLIP: shortest edge 224 (aspect kept), bicubic, center crop 224, CLIP's mean/std
        "clip": CLIPImageProcessorPil(),
        # DeiT: resize to 256x256 bicubic, center crop 224, ImageNet mean/std
        "deit": DeiTImageProcessorPil(),
        # a crop larger than the resized image: the processor pads with zeros before rescaling
        "padded_crop": ViTImageProcessorPil(size={"height": 40, "width": 60}, do_center_crop=True,
                                            crop_size={"height": 48, "width": 48}, resample=3),
    }


def _reference(processor: object, data: bytes) -> np.ndarray:
    return image_to_pixel_values(processor, [decode_image(data)])[0].numpy()


def _fused(processor: object, data: bytes, *, draft: bool) -> np.ndarray:
    fused = fuse_image_processor(processor, draft=draft)
    return fused.normalize(torch.from_numpy(fused.pixels(data)[None]))[0].numpy()


def _png(width: int, height: int, *, seed: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    photo_like(width, height, seed=seed).convert(mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", list(_processors()))
def test_without_draft_the_pixels_are_the_processors_exactly(name: str) -> None:
    processor = _processors()[name]
    inputs = [
        _png(300, 200, seed=1),  # landscape
        _png(97, 203, seed=2),  # portrait, smaller than some targets (upscaled)
        _png(120, 90, seed=3, mode="RGBA"),  # alpha over white
        _png(64, 64, seed=4, mode="L"),  # greyscale
        photo_bytes(640, 480, seed=5),  # a JPEG, decoded in full
    ]
    for data in inputs:
        theirs, ours = _reference(processor, data), _fused(processor, data, draft=False)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


def _level_diff(processor: object, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """|ours - theirs| in 8-bit levels of the picture (0..255), whatever the mean / std."""
    std = np.asarray(processor.image_std, dtype=np.float64).reshape(3, 1, 1)
    return np.abs(ours.astype(np.float64) - theirs) * std / processor.rescale_factor


@pytest.mark.parametrize("name", ["vit224", "clip", "deit", "demo"])
def test_draft_decoded_jpegs_stay_close_to_the_processors_pixels(name: str) -> None:
    # In 8-bit levels, measured on these pictures (photo-like: smooth fields, sharp shapes,
    # grain): mean 0.1-1.0, 99th percentile 1-7, largest 1-24 (at a sharp edge, 640x480 to
    # 224x224, where the reduced decode sits at 2x the target and the resize does the rest).
    # The bounds leave about 2x room; a wrong scale, channel or a shifted grid is far past them.
    processor = _processors()[name]
    for width, height in ((640, 480), (1600, 1200), (4000, 3000)):
        data = photo_bytes(width, height, seed=width)
        theirs, ours = _reference(processor, data), _fused(processor, data, draft=True)
        assert ours.shape == theirs.shape
        diff = _level_diff(processor, ours, theirs)
        assert diff.mean() < 2.0, (width, height, diff.mean())
        assert np.percentile(diff, 99) < 12, (width, height, np.percentile(diff, 99))
        assert diff.max() < 48, (width, height, diff.max())


def test_draft_follows_the_exif_orientation() -> None:
    # Stored 1200x1600 (portrait), EXIF orientation 6: displayed 1600x1200 (landscape).
    stored = photo_like(1200, 1600, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    data = buf.getvalue()
    processor = _processors()["clip"]  # aspect-kept resize: a wrong orientation changes the crop
    theirs, ours = _reference(processor, data), _fused(processor, data, draft=True)
    assert _level_diff(processor, ours, theirs).mean() < 2.0  # rotated the wrong way: tens of levels


def test_normalize_is_the_processors_arithmetic_for_every_level() -> None:
    for processor in _processors().values():
        fused = fuse_image_processor(processor)
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256).contiguous()
        np.testing.assert_array_equal(fused.normalize(levels).view(3, 256).numpy(), fused.table)
        # the lookup a device falls back to when its arithmetic is off in the last bit
        fused._exact_on["cpu"] = False
        np.testing.assert_array_equal(fused.normalize(levels).view(3, 256).numpy(), fused.table)


@pytest.mark.parametrize(
    "processor,reason",
    [
        (BeitImageProcessorPil(), "own _preprocess"),
        (ConvNextImageProcessorPil(), "own _preprocess"),
        (DonutImageProcessorPil(), "own _preprocess"),
        (ViTImageProcessorPil(do_resize=False), "depends on the image"),
        (CLIPImageProcessorPil(do_center_crop=False), "depends on the image"),
        (ViTImageProcessorPil(do_pad=True, pad_size={"height": 256, "width": 256}), "pads"),
        (object(), "not a transformers PIL-backend"),
    ],
)
def test_processors_the_fused_path_does_not_cover_are_refused(processor: object, reason: str) -> None:
    with pytest.raises(UnsupportedImageProcessor, match=reason):
        fuse_image_processor(processor)


def test_an_uncovered_processor_is_used_as_it_is_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    processor = DonutImageProcessorPil(size={"height": 64, "width": 48})
    data = [_png(100, 80, seed=9), _png(80, 100, seed=10)]
    with caplog.at_level(logging.WARNING, logger="combiner_core.images"):
        encoded = encode_images(processor, data)
        encode_images(processor, data)
    assert fused_image_processor(processor) is None
    assert sum("does not cover" in r.getMessage() for r in caplog.records) == 1
    assert encoded.dtype == np.float32  # the processor's own values cross to the model
    expected = image_to_pixel_values(processor, [decode_image(d) for d in data]).numpy()
    np.testing.assert_array_equal(model_pixel_values(processor, encoded).numpy(), expected)


def test_an_uncovered_processor_gets_a_batch_in_one_call_and_bad_images_their_own_rows() -> None:
    """encode_each: the images that decode go through the processor in ONE call (a
    transformers processor costs milliseconds a call); a corrupt image, and an image
    the processor itself fails on, are errors of their rows only."""
    from combiner_core import InputError
    from combiner_core.images import encode_each

    class Counting(DonutImageProcessorPil):
        calls: list[int] = []

        def __call__(self, images, **kwargs):
            Counting.calls.append(len(images))
            if any(im.size == (13, 7) for im in images):
                raise ValueError("cannot handle 13x7")
            return super().__call__(images, **kwargs)

    processor = Counting(size={"height": 64, "width": 48})
    good = [_png(100, 80, seed=9), _png(80, 100, seed=10), _png(90, 90, seed=11)]
    out = encode_each(processor, [good[0], b"not an image", good[1], good[2]])
    assert Counting.calls == [3]
    assert isinstance(out[1], InputError) and out[1].cause == "unknown_format"
    expected = image_to_pixel_values(processor, [decode_image(d) for d in good]).numpy()
    np.testing.assert_array_equal(np.stack([out[0], out[2], out[3]]), expected)
    Counting.calls.clear()
    odd = _png(13, 7, seed=12)
    out = encode_each(processor, [good[0], odd, good[1]])
    assert Counting.calls == [3, 1, 1, 1]  # the batch call failed: one at a time finds the image
    assert isinstance(out[1], InputError) and out[1].cause == "unprocessable_image"
    assert "cannot handle 13x7" in str(out[1]) and "Counting" in str(out[1])
    np.testing.assert_array_equal(np.stack([out[0], out[2]]), expected[:2])


def test_fused_steps_that_differ_on_the_test_pictures_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A processor whose steps look like ours by name but compute something else (here:
    # our resize rule made one pixel off) must be caught by the construction check.
    import combiner_core.images as images

    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    assert fuse_image_processor(processor).output_size == (32, 32)
    monkeypatch.setattr(images, "_resize_target", lambda size, height, width: (33, 32))
    with pytest.raises(UnsupportedImageProcessor, match="differ from the fused steps"):
        fuse_image_processor(processor)


@pytest.mark.parametrize(
    "data,cause",
    [
        (b"", "empty_image"),
        (b"not an image at all", "unknown_format"),
        (photo_bytes(640, 480, seed=1)[:20_000], "corrupt_image"),
    ],
)
def test_bad_bytes_fail_as_decode_image_does(data: bytes, cause: str) -> None:
    fused = fuse_image_processor(_processors()["vit224"])
    with pytest.raises(ImageDecodeError) as ours:
        fused.pixels(data)
    with pytest.raises(ImageDecodeError) as theirs:
        decode_image(data)
    assert ours.value.cause == theirs.value.cause == cause


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    fused = fuse_image_processor(_processors()["vit224"])
    with pytest.raises(ImageDecodeError) as err:
        fused.pixels(photo_bytes(640, 480, seed=1), max_pixels=640 * 480 - 1)
    assert err.value.cause == "too_large"


def test_the_bundled_samples_captions_do_not_change_through_draft_decoded_jpegs() -> None:
    # The bundled sample's 64x64 pictures, enlarged to 512x512 JPEGs: the fused path
    # decodes them at 1/8 scale (64x64), the processor in full then resizes. The demo
    # captioner must write the same caption either way, and the reference for each.
    combiner = load_combiner(str(DEMO))
    table = pq.read_table(REPO / "jobs" / "sample" / "shapes-00.parquet")
    jpegs, refs = [], table.column("caption").to_pylist()
    for png in table.column("image").to_pylist():
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue())
    processor = combiner.image_processor
    theirs = generate(combiner, {"pixel_values": image_to_pixel_values(processor, [decode_image(d) for d in jpegs])})
    encoded = encode_images(processor, jpegs)
    assert encoded.dtype == np.uint8 and encoded.shape == (len(jpegs), 3, 64, 64)
    ours = generate(combiner, {"pixel_values": model_pixel_values(processor, encoded)})
    assert [c[0].text for c in ours] == [c[0].text for c in theirs]
    assert [c[0].text for c in ours] == refs
