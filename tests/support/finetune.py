"""A fine-tuning spec for a tiny ViT + GPT-2 captioner on a small shapes set."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.demo_data.shapes import iter_examples, write_vocabulary


def tiny_shapes_spec(
    root: Path, *, name: str, storage: str, export: str, workers: int = 1, train_rows: int = 96, **training
) -> dict:
    """A spec for a tiny ViT + GPT-2 captioner on a small shapes set with two bad rows."""
    for split, count in (("train", train_rows), ("eval", 16), ("heldout", 16)):
        rows = list(iter_examples(split, count))
        if split == "train":
            rows[3]["caption"] = ""  # empty target
            rows[7]["image"] = b"\x89PNG\r\n\x1a\n-truncated"  # corrupt image
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    write_vocabulary(root / "vocab.txt")
    train = {"epochs": 2, "batch_size": 8, "learning_rate": 0.003, "warmup_steps": 2, "seed": 0, "log_every_steps": 5}
    train.update(training)
    return {
        "model": {
            "random": {
                "encoder_config": {
                    "model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                    "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
                },
                "decoder_config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 16},
                "words_file": str(root / "vocab.txt"),
                "image_size": 32,
            }
        },
        "data": {
            "train": {"uri": str(root / "train")},
            "eval": {"uri": str(root / "eval")},
            "test": {"uri": str(root / "heldout")},
            "max_target_tokens": 12,
        },
        "training": train,
        "evaluation": {"generation": {"strategy": "greedy", "max_new_tokens": 12}, "batch_size": 16},
        "scaling": {"num_workers": workers},
        "run": {"name": name, "storage_path": storage, "num_to_keep": 2, "max_failures": 1},
        "export": {"uri": export},
    }
