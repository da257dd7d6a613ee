"""model.quantize: int8 reaches the model actor: the plan carries it, ModelWorker (run here
without Ray, as a plain object) builds its engine / scorer with it, and a batch of the
bundled sample captions as float32 does (models/demo-captioner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.support.generation as gs
from combiner_core.engine.model.quantize import is_quantized
from pipelines import validate_spec
from pipelines.demo_data.shapes import iter_examples
from pipelines.generation import CaptionJobSpec, LabelJobSpec, build_plan

REPO = Path(__file__).resolve().parents[2]
MODEL = str(REPO / "models" / "demo-captioner")


@pytest.mark.parametrize("kind", ["caption", "label"])
def test_int8_spec_reaches_the_model_worker(kind: str, tmp_path: Path) -> None:
    from pipelines.generation.stages import ModelWorker, read_and_preprocess, read_groups
    from pipelines.reading import list_inputs, plan_shards

    rows = [{"id": r["id"], "image": r["image"]} for r in iter_examples("heldout", 8)]
    gs.write_parquet(str(tmp_path / "in" / "0.parquet"), rows)
    source = {"uri": str(tmp_path / "in"), "format": "parquet", "input_column": "image", "id_column": "id"}
    outputs = {}
    for quantize in (None, "int8"):
        spec = gs.caption_spec(str(tmp_path / "in"), str(tmp_path / f"out-{quantize}"), MODEL, input=source,
                               batch_size=8)
        if quantize:
            spec["model"]["quantize"] = quantize
        if kind == "label":
            spec.pop("generation")
            spec["labels"] = ["circle", "square", "triangle"]
        plan = build_plan(validate_spec(CaptionJobSpec if kind == "caption" else LabelJobSpec, spec, source="t"))
        assert plan.model.quantize == quantize
        worker = ModelWorker(plan=plan)
        assert worker.engine.quantize == quantize
        if kind == "caption" and quantize:
            assert is_quantized(worker.engine.desc)
        listing = list_inputs(plan.reader.root, format="parquet")
        groups = read_groups(plan_shards(listing.files, format="parquet", sizes=listing.sizes), {})
        (batch,) = read_and_preprocess({"shards": np.array(groups, dtype=object)}, plan=plan)
        table = worker(batch).to_pylist()
        outputs[quantize] = [r["text"] if kind == "caption" else r["label"] for r in table]
    assert outputs["int8"] == outputs[None] and all(outputs[None])
