"""Helpers for the generation-job tests: tiny saved combiners, inputs, output readers."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from PIL import Image, ImageDraw

import tests.support.tiny as tiny
from combiner_core import Combiner, random_combiner, save_combiner

DOC_WORDS = tiny.WORDS


def captioner() -> Combiner:
    """Tiny ViT + GPT-2 (random weights, input-dependent outputs: see tests/support/tiny.py)."""
    return random_combiner(
        encoder_config=tiny.vit_config(),
        decoder_config=tiny.gpt2_config(tiny.gpt2_style_tokenizer()),
        decoder_tokenizer=tiny.gpt2_style_tokenizer(),
        image_processor=tiny.vit_image_processor(),
        seed=1,
    )


def summarizer() -> Combiner:
    """Tiny BERT + GPT-2 text combiner; its input limit is 64 tokens."""
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    return random_combiner(
        encoder_config=tiny.bert_config(bt), decoder_config=tiny.gpt2_config(gt),
        tokenizer=bt, decoder_tokenizer=gt, seed=2,
    )


def save(combiner: Combiner, uri: str) -> str:
    save_combiner(combiner, uri)
    return uri


def image_bytes(i: int, fmt: str = "PNG") -> bytes:
    """A distinct small picture per i, in any PIL format (GIF gets two frames)."""
    colors = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 210, 40), (20, 20, 20)]
    image = Image.new("RGB", (24 + 3 * (i % 5), 30), colors[i % 5])
    ImageDraw.Draw(image).rectangle((i % 7, 2, 10 + i % 11, 12 + i % 9), fill=colors[(i + 2) % 5])
    buf = io.BytesIO()
    if fmt == "GIF":
        second = Image.new("RGB", image.size, (0, 0, 0))
        image.save(buf, "GIF", save_all=True, append_images=[second])
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def document(i: int) -> str:
    words = DOC_WORDS
    return " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(4 + i % 9))


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_parquet(uri: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    fs, path = url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), f)


def write_jsonl(uri: str, records: list[dict[str, Any]]) -> None:
    write_bytes(uri, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_dir(uri: str) -> pa.Table:
    """The output as a plain-directory reader sees it (pyarrow.dataset, '_' paths ignored)."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path) or not fs.find(path):
        return pa.table({})
    return pads.dataset(path, format="parquet", filesystem=fs).to_table()


def read_errors(uri: str) -> pa.Table:
    return read_dir(uri.rstrip("/") + "/_errors")


def read_summary(uri: str) -> dict[str, Any]:
    fs, path = url_to_fs(uri.rstrip("/") + "/_summary.json")
    with fs.open(path, "r") as f:
        return json.load(f)


def assert_exactly_once(uri: str, expected_ids: set[str]) -> tuple[pa.Table, pa.Table]:
    """Every expected id appears once across output and _errors, and nothing else does."""
    ok, bad = read_dir(uri), read_errors(uri)
    ids = (ok.column("id").to_pylist() if ok.num_rows else []) + (
        bad.column("id").to_pylist() if bad.num_rows else []
    )
    counts = Counter(ids)
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"ids seen more than once: {sorted(dupes.items())[:5]}"
    assert set(counts) == expected_ids, (
        f"missing {sorted(expected_ids - set(counts))[:5]}, unexpected {sorted(set(counts) - expected_ids)[:5]}"
    )
    summary = read_summary(uri)
    assert summary["rows_in"] == len(expected_ids) == summary["rows_ok"] + summary["rows_errored"]
    assert summary["rows_ok"] == ok.num_rows and summary["rows_errored"] == bad.num_rows
    return ok, bad


def caption_spec(input_uri: str, output_uri: str, model_uri: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "input": {"uri": input_uri, "format": "images", "files_per_shard": 4},
        "output": {"uri": output_uri, "mode": "error_if_exists"},
        "model": {"uri": model_uri},
        "generation": {"strategy": "greedy", "max_new_tokens": 6},
        "batch_size": 4,
        "resources": {"workers": 1, "num_gpus": 0, "preprocess_cpus": 0.25, "worker_cpus": 0.5},
    }
    for key, value in overrides.items():
        node = spec
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return spec


def summarize_spec(input_uri: str, output_uri: str, model_uri: str, **overrides: Any) -> dict[str, Any]:
    spec = caption_spec(input_uri, output_uri, model_uri, **overrides)
    spec["input"].pop("files_per_shard", None)
    spec["input"].setdefault("format", "jsonl")
    if spec["input"]["format"] == "images":
        spec["input"]["format"] = "jsonl"
    return spec


def local_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
