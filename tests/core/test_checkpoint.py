"""Save / load round trips (local and s3://), stock transformers compatibility, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    EncoderDecoderModel,
    T5Config,
    T5ForConditionalGeneration,
    VisionEncoderDecoderModel,
)

import tests.support.tiny as tiny
from combiner_core import (
    GenerationParams,
    generate_images,
    generate_texts,
    load_combiner,
    random_combiner,
    save_combiner,
)
from combiner_core.checkpoint import MANIFEST_NAME, read_manifest, sha256_file
from combiner_core.errors import ManifestMismatchError, NotACombinerError
from tests.support.combos import IMAGES, TEXTS

PARAMS = [GenerationParams(max_new_tokens=8), GenerationParams(strategy="beam", num_beams=3, max_new_tokens=8)]


@pytest.fixture(scope="module")
def bert2gpt2():
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    return random_combiner(
        encoder_config=tiny.bert_config(bt), decoder_config=tiny.gpt2_config(gt), tokenizer=bt, decoder_tokenizer=gt, seed=3
    )


@pytest.fixture(scope="module")
def vit2gpt2():
    gt = tiny.gpt2_style_tokenizer()
    return random_combiner(
        encoder_config=tiny.vit_config(),
        decoder_config=tiny.gpt2_config(gt),
        decoder_tokenizer=gt,
        image_processor=tiny.vit_image_processor(),
        seed=4,
    )


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs after the round trip"


def _outputs(combiner, params):
    if combiner.modality == "image":
        return [[g.token_ids for g in row] for row in generate_images(combiner, IMAGES, params)]
    return [[g.token_ids for g in row] for row in generate_texts(combiner, TEXTS, params)]


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("which", ["bert2gpt2", "vit2gpt2"])
def test_round_trip_is_bitwise(which, where, request, tmp_path: Path) -> None:
    combiner = request.getfixturevalue(which)
    uri = str(tmp_path / "saved") if where == "local" else request.getfixturevalue("s3_bucket") + "/models/c1"
    manifest = save_combiner(combiner, uri)
    loaded = load_combiner(uri)
    _assert_same_weights(combiner.model, loaded.model)
    assert loaded.layout == combiner.layout
    assert loaded.weights_sha256 == manifest["weights_sha256"]
    for params in PARAMS:
        assert _outputs(loaded, params) == _outputs(combiner, params)
    if which == "bert2gpt2":
        # bert2gpt2 keeps two tokenizers: inputs in BERT's vocabulary, outputs in GPT-2's.
        assert loaded.tokenizer.eos_token != loaded.decoder_tokenizer.eos_token
        assert "decoder_tokenizer/tokenizer.json" in manifest["files"]


def test_saved_folder_is_stock_transformers(bert2gpt2, vit2gpt2, tmp_path: Path) -> None:
    for combiner, cls in ((bert2gpt2, EncoderDecoderModel), (vit2gpt2, VisionEncoderDecoderModel)):
        folder = tmp_path / cls.__name__
        save_combiner(combiner, str(folder))
        stock = cls.from_pretrained(folder)
        _assert_same_weights(combiner.model, stock)
        inputs = (
            {"pixel_values": combiner.image_processor(images=[tiny_image()], return_tensors="pt")["pixel_values"]}
            if combiner.modality == "image"
            else dict(combiner.tokenizer(["a red circle"], return_tensors="pt"))
        )
        inputs.pop("token_type_ids", None)
        with torch.inference_mode():
            ours = combiner.model.generate(**inputs, max_new_tokens=6)
            theirs = stock.generate(**inputs, max_new_tokens=6)
        assert torch.equal(ours, theirs)
        assert stock.generation_config.decoder_start_token_id == combiner.model.generation_config.decoder_start_token_id


def tiny_image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (10, 200, 30))


def test_manifest_lists_every_file_and_versions(bert2gpt2, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    manifest = save_combiner(bert2gpt2, str(folder), extra={"note": "unit test"})
    on_disk = read_manifest(folder)
    assert on_disk == manifest
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    assert set(manifest["files"]) == files
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(folder / name)
    assert manifest["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert {"torch", "transformers", "safetensors"} <= set(manifest["libraries"])
    assert manifest["extra"] == {"note": "unit test"}
    # Weights are safetensors only.
    assert not list(folder.glob("*.bin"))
    assert load_file(folder / "model.safetensors")


def test_tampered_weights_are_detected(bert2gpt2, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    save_combiner(bert2gpt2, str(folder))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ManifestMismatchError, match=r"model.safetensors \(sha256 differs\)"):
        load_combiner(str(folder))


def test_native_seq2seq_checkpoints_load(tmp_path: Path) -> None:
    tok = tiny.bert_tokenizer()
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    bart = BartForConditionalGeneration(
        BartConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
            decoder_start_token_id=tok.bos_token_id, forced_eos_token_id=None, init_std=1.0, **common,
        )
    )
    t5 = T5ForConditionalGeneration(
        T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=tok.pad_token_id,
                 initializer_factor=1.0, **common)
    )
    for name, model in (("bart", bart), ("t5", t5)):
        folder = tmp_path / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        loaded = load_combiner(str(folder))
        assert loaded.layout == "seq2seq" and loaded.modality == "text"
        ours = [r[0].token_ids for r in generate_texts(loaded, TEXTS, GenerationParams(max_new_tokens=6))]
        batch = dict(tok(TEXTS, return_tensors="pt", padding=True))
        batch.pop("token_type_ids", None)
        with torch.inference_mode():
            ref = model.eval().generate(**batch, max_new_tokens=6, do_sample=False)
        # generate() pads finished rows; compare up to and including eos.
        for row, expected in zip(ours, ref[:, 1:].tolist(), strict=True):
            assert list(row) == expected[: len(row)]
        assert loaded.weights_sha256 == sha256_file(folder / "model.safetensors")


def test_plain_encoder_is_not_a_combiner(minilm_dir: Path) -> None:
    with pytest.raises(NotACombinerError, match="'bert' model, which is not an encoder-decoder.*warm_start_combiner"):
        load_combiner(str(minilm_dir))


def test_config_records_special_tokens(bert2gpt2, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    save_combiner(bert2gpt2, str(folder))
    config = json.loads((folder / "config.json").read_text())
    gen = json.loads((folder / "generation_config.json").read_text())
    gt = bert2gpt2.decoder_tokenizer
    assert config["decoder_start_token_id"] == gen["decoder_start_token_id"] == gt.bos_token_id
    assert config["pad_token_id"] == gen["pad_token_id"] == gt.eos_token_id  # GPT-2: pad = eos


def test_preprocessor_loads_without_weights(bert2gpt2, vit2gpt2, s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    from combiner_core import load_preprocessor
    from combiner_core.storage import cache_root

    monkeypatch.setenv("COMBINER_CACHE_DIR", str(tmp_path / "cache"))
    save_combiner(bert2gpt2, f"{s3_bucket}/text")
    save_combiner(vit2gpt2, f"{s3_bucket}/vision")
    text = load_preprocessor(f"{s3_bucket}/text")
    assert text.modality == "text" and text.image_processor is None
    assert text.tokenizer("a red circle")["input_ids"] == bert2gpt2.tokenizer("a red circle")["input_ids"]
    assert text.decoder_tokenizer.get_vocab() == bert2gpt2.decoder_tokenizer.get_vocab()
    assert text.max_input_tokens == bert2gpt2.max_input_tokens == 64
    vision = load_preprocessor(f"{s3_bucket}/vision")
    assert vision.modality == "image" and vision.tokenizer is None
    image = tiny_image()
    assert torch.equal(
        vision.image_processor(images=[image], return_tensors="pt")["pixel_values"],
        vit2gpt2.image_processor(images=[image], return_tensors="pt")["pixel_values"],
    )
    # Only tokenizer and processor files were fetched: no weights on a CPU-only node.
    fetched = {p.name for p in cache_root().rglob("*") if p.is_file()}
    assert "tokenizer.json" in fetched and "preprocessor_config.json" in fetched
    assert not any(name.endswith(".safetensors") for name in fetched)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this process sees a CUDA device")
def test_cuda_without_a_gpu_is_refused_before_loading(bert2gpt2, tmp_path: Path) -> None:
    """device='cuda' where torch sees no GPU: a ParameterError naming the call and the fix,
    not torch's assert from inside model.to() (a new user's trial hit that)."""
    from combiner_core.errors import ParameterError

    save_combiner(bert2gpt2, str(tmp_path / "m"))
    with pytest.raises(ParameterError, match=r"device='cuda'.*no CUDA device.*pass device='cpu'"):
        load_combiner(str(tmp_path / "m"), device="cuda")
