"""Fine-tuning through a real local Ray cluster (TorchTrainer, DDP on gloo, Ray Data shards)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from combiner_core import (
    GenerationParams,
    decode_image,
    generate,
    image_to_pixel_values,
    load_combiner,
)
from pipelines import load_spec
from pipelines.demo_data.shapes import iter_examples
from pipelines.finetune import FinetuneSpec, run_finetune
from tests.support.finetune import tiny_shapes_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from pipelines.finetune.run import TRAIN_POLL_ENV, TRAIN_POLL_S

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)  # what a fine-tune's private Ray gets
    # 2 real cores; 4 logical CPUs let two training workers and Ray Data's read
    # tasks hold resources at the same time.
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def test_two_worker_ddp_trains_exports_and_reloads(ray_cluster, tmp_path):
    raw = tiny_shapes_spec(
        tmp_path / "data", name="ddp", storage=str(tmp_path / "runs"), export=str(tmp_path / "export"),
        workers=2, eval_every_steps=3,
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    spec = load_spec(FinetuneSpec, spec_file)
    result = run_finetune(spec)
    m = result.metrics

    # Both DDP replicas hold the same weights at every report (the loop also checks
    # this itself and fails the run if they diverge).
    assert len(m["replica_weight_digests"]) == 2 and len(set(m["replica_weight_digests"])) == 1
    losses = [h["eval_loss"] for h in result.history]
    assert result.history[0]["step"] == 0 and result.history[1]["step"] == 3  # first report after 3 steps
    assert losses[-1] < 0.9 * losses[0], losses
    train_losses = [h["train_loss"] for h in result.history if h.get("train_loss") is not None]
    assert train_losses[-1] < train_losses[0], train_losses
    assert m["finished"] and m["step"] == result.history[-1]["step"]
    # 96 rows / 2 workers / batch 8 = 6 steps per epoch, 2 epochs.
    assert m["step"] == 12
    # The two bad rows were skipped and counted, once per pass over the data.
    assert m["skipped_rows"]["train"] == {"empty_target": 1, "corrupt_image": 1}
    assert sorted(summary_bad := json.loads((tmp_path / "export" / "metrics.json").read_text())["bad_rows"]["train"]) == ["train-000003", "train-000007"], summary_bad
    assert m["test_num_scored"] == 16 and m["eval_num_scored"] == 16
    for key in ("eval_exact_match", "eval_bleu", "eval_chrf", "eval_rougeL", "test_exact_match"):
        assert key in m

    export = tmp_path / "export"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                 "combiner_manifest.json", "loss_curve.png", "metrics.json"):
        assert (export / name).exists(), name
    summary = json.loads((export / "metrics.json").read_text())
    assert summary["metrics"]["step"] == 12 and len(summary["history"]) == len(result.history)

    # Stock transformers and combiner_core load the export and generate the same tokens.
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    images = [decode_image(r["image"]) for r in iter_examples("heldout", 4)]
    stock = VisionEncoderDecoderModel.from_pretrained(export).eval()
    processor = AutoImageProcessor.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        stock_ids = stock.generate(pixel_values=pixels, max_new_tokens=12, num_beams=1, do_sample=False)
    stock_texts = tokenizer.batch_decode(stock_ids, skip_special_tokens=True)
    combiner = load_combiner(str(export))
    ours = generate(
        combiner,
        {"pixel_values": image_to_pixel_values(combiner.image_processor, images)},
        GenerationParams(strategy="greedy", max_new_tokens=12),
    )
    assert [o[0].text for o in ours] == [t.strip() for t in stock_texts]

    # ... and caption_dataset, on this Ray, writes the same captions.
    from pipelines import validate_spec
    from pipelines.generation import CaptionJobSpec, run_job

    heldout = tmp_path / "heldout4"
    heldout.mkdir()
    pq.write_table(pa.Table.from_pylist(list(iter_examples("heldout", 4))), heldout / "part-0.parquet")
    job = validate_spec(
        CaptionJobSpec,
        {
            "input": {"uri": str(heldout), "format": "parquet", "input_column": "image", "id_column": "id"},
            "output": {"uri": str(tmp_path / "captions"), "mode": "overwrite"},
            "model": {"uri": str(export)},
            "generation": {"strategy": "greedy", "max_new_tokens": 12},
        },
        source="test",
    )
    summary_job = run_job(job, ray_init=None)
    assert summary_job.rows_ok == 4
    captions = pq.read_table(tmp_path / "captions", columns=["id", "text"]).to_pylist()
    by_id = {r["id"]: r["text"] for r in captions}
    ids = [r["id"] for r in iter_examples("heldout", 4)]
    assert [by_id[i] for i in ids] == [t.strip() for t in stock_texts]

    # Started again with the same spec, a finished run trains nothing and exports again.
    again = run_finetune(spec)
    assert again.metrics["step"] == 12 and again.history == result.history
