"""combiner_core.images: the fused processor read from preprocessor_config.json alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from combiner_core import load_preprocessor
from combiner_core.images import (
    fuse_image_processor,
    fused_image_processor_from_config,
    fused_image_processor_of,
    same_pixels,
)
from pipelines.demo_data.photos import photo_bytes

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo-captioner"


def _saved(tmp_path: Path, **kwargs: object) -> Path:
    """A folder with the preprocessor_config.json transformers writes for a ViT processor."""
    folder = tmp_path / "ckpt"
    ViTImageProcessorPil(**kwargs).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kwargs", [
    {},  # the demo captioner's own config (below)
    {"size": {"height": 224, "width": 224}, "resample": 3},
    {"size": {"height": 30, "width": 90}, "resample": 0, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7]},
    {"size": {"height": 48, "width": 48}, "do_normalize": False, "do_rescale": False},
])
def test_a_config_read_alone_makes_the_loaded_processors_pixels(tmp_path: Path, kwargs: dict) -> None:
    folder = DEMO if not kwargs else _saved(tmp_path, **kwargs)
    light = fused_image_processor_of(str(folder))
    assert light is not None
    loaded = fuse_image_processor(load_preprocessor(str(DEMO)).image_processor if not kwargs
                                  else ViTImageProcessorPil.from_pretrained(folder))
    assert same_pixels(light, loaded)
    assert np.array_equal(light.table, loaded.table)
    assert (light.rescale_factor, light.mean, light.std) == (loaded.rescale_factor, loaded.mean, loaded.std)
    for i, (width, height) in enumerate([(1600, 1200), (3000, 4000), (97, 131)]):
        data = photo_bytes(width, height, seed=i)
        assert np.array_equal(light.pixels(data), loaded.pixels(data))


def _demo_config() -> dict:
    return json.loads((DEMO / "preprocessor_config.json").read_text())


@pytest.mark.parametrize("change", [
    {"image_processor_type": "CLIPImageProcessor"},  # another class: other steps
    {"do_center_crop": True, "crop_size": {"height": 32, "width": 32}},  # a key the reader does not know
    {"feature_extractor_type": "ViTFeatureExtractor"},
    {"size": 224},  # the old int form: its meaning is left to transformers
    {"size": {"shortest_edge": 64}},
    {"do_resize": False},
    {"resample": "bilinear"},
    {"image_mean": [0.5, 0.5]},
])
def test_configs_that_do_not_say_everything_are_left_to_transformers(change: dict) -> None:
    assert fused_image_processor_from_config({**_demo_config(), **change}) is None


@pytest.mark.parametrize("missing", ["resample", "do_rescale", "image_std", "size"])
def test_a_setting_left_to_transformers_default_is_not_guessed(missing: str) -> None:
    config = _demo_config()
    del config[missing]
    assert fused_image_processor_from_config(config) is None


def test_folders_the_reader_does_not_cover(tmp_path: Path) -> None:
    assert fused_image_processor_of("google/vit-base-patch16-224") is None  # a hub id
    assert fused_image_processor_of(str(tmp_path / "missing")) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "preprocessor_config.json").write_text("{not json")
    assert fused_image_processor_of(str(tmp_path / "broken")) is None
    folder = _saved(tmp_path, size={"height": 32, "width": 32})
    assert fused_image_processor_of(str(folder)) is not None
    (folder / "processor_config.json").write_text("{}")  # may override the image processor's settings
    assert fused_image_processor_of(str(folder)) is None


def test_a_remote_checkpoints_config_is_read_alone() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/ckpt-light/preprocessor_config.json", (DEMO / "preprocessor_config.json").read_bytes())
    try:
        light = fused_image_processor_of("memory://ckpt-light")
        assert light is not None and light.output_size == (64, 64)
    finally:
        fs.rm("/ckpt-light", recursive=True)


def test_reading_the_config_and_decoding_import_neither_torch_nor_transformers() -> None:
    """What a CPU worker of a caption job runs: seconds of imports saved at each start."""
    code = (
        "import sys\n"
        "from combiner_core.images import encode_images, fused_image_processor_of\n"
        "from pipelines.demo_data.photos import photo_bytes\n"
        f"fused = fused_image_processor_of({str(DEMO)!r})\n"
        "pixels = encode_images(fused, [photo_bytes(1600, 1200, seed=0)])\n"
        "assert pixels.shape == (1, 3, 64, 64) and pixels.dtype.name == 'uint8'\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().endswith("HEAVY="), out.stdout[-2000:] + out.stderr[-2000:]


def test_same_pixels_tells_a_different_resize_filter_or_size() -> None:
    base = fused_image_processor_from_config(_demo_config())
    assert base is not None and same_pixels(base, base)
    for change in ({"resample": 3}, {"size": {"height": 64, "width": 65}}):
        other = fused_image_processor_from_config({**_demo_config(), **change})
        assert other is not None and not same_pixels(base, other)
