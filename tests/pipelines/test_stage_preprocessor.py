"""What the CPU stage preprocesses with, and the model actor's check that its pixels are right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from combiner_core import GenerationParams, load_preprocessor
from combiner_core.errors import CombinerError
from pipelines.demo_data.photos import photo_bytes
from pipelines.generation.tasks.base import (
    ConfigImagePreprocessor,
    check_stage_pixels,
    config_image_preprocessor,
    preprocess_images,
    stage_preprocessor,
)
from pipelines.generation.tasks.generate import CaptionTask
from pipelines.generation.tasks.label import LabelTask

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "models" / "demo-captioner")


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    config_image_preprocessor.cache_clear()


def _batch(payloads: list[bytes | None]) -> dict[str, np.ndarray]:
    n = len(payloads)
    arr = np.empty(n, dtype=object)
    arr[:] = payloads
    empty = np.array([""] * n, dtype=object)
    return {"id": np.array([str(i) for i in range(n)], dtype=object), "payload": arr,
            "error_stage": empty.copy(), "error_cause": empty.copy(), "error_message": empty.copy()}


def test_a_caption_stage_reads_the_config_alone_and_makes_the_processors_pixels() -> None:
    caption = CaptionTask(params=GenerationParams())
    pre = stage_preprocessor(caption, DEMO, False)
    assert isinstance(pre, ConfigImagePreprocessor)
    batch = _batch([photo_bytes(1600, 1200, seed=1), b"not an image", photo_bytes(400, 3000, seed=2)])
    ours = preprocess_images(dict(batch), pre)
    theirs = preprocess_images(dict(batch), load_preprocessor(DEMO))
    assert np.array_equal(ours["pixel_values"], theirs["pixel_values"])
    assert list(ours["error_cause"]) == list(theirs["error_cause"]) == ["", "unknown_format", ""]
    # trust_remote_code: the checkpoint's own code decides, so transformers loads it
    assert not isinstance(stage_preprocessor(caption, DEMO, True), ConfigImagePreprocessor)


def test_a_label_stage_keeps_the_checkpoints_preprocessor() -> None:
    """Label jobs read text or images and need the tokenizer: the full Preprocessor."""
    label = LabelTask(names=("a", "b"), verbalizations=(("a",), ("b",)))
    assert not isinstance(stage_preprocessor(label, DEMO, False), ConfigImagePreprocessor)


def test_the_actor_refuses_a_config_read_differently_from_the_loaded_processor(tmp_path: Path) -> None:
    caption = CaptionTask(params=GenerationParams())
    loaded = load_preprocessor(DEMO).image_processor
    check_stage_pixels(caption, DEMO, False, loaded)  # the same checkpoint: fine
    other = tmp_path / "other"
    shutil.copytree(DEMO, other)
    config = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**config, "resample": 3}))
    with pytest.raises(CombinerError, match="bug in combiner_core.images.fused_image_processor_from_config") as err:
        check_stage_pixels(caption, str(other), False, loaded)  # the stage's pixels would be bicubic ones
    assert "filter 3" in str(err.value) and "filter 2" in str(err.value)  # says which step differs
    check_stage_pixels(caption, str(other), False, None)  # no processor: the model call reports that
