"""Warm-starting combiners from pretrained checkpoints: real MiniLM weights and tiny saved ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, EncoderDecoderModel, VisionEncoderDecoderModel

import tests.support.tiny as tiny
from combiner_core import (
    GenerationParams,
    generate_images,
    generate_texts,
    load_combiner,
    save_combiner,
    warm_start_combiner,
)
from combiner_core.build import DecoderOptions, EncoderOptions
from tests.support.combos import IMAGES

DOCS = [
    "The committee met on Tuesday and approved the budget for next year.",
    "Heavy rain flooded several streets in the old town overnight.",
]


def test_minilm_bert2bert_warm_start_save_reload_generate(minilm_dir: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level("INFO"):
        combiner = warm_start_combiner(encoder_uri=str(minilm_dir), decoder_uri=str(minilm_dir), seed=0)
    # One line says which weights start random, instead of transformers' LOAD REPORT table.
    said = [r.getMessage() for r in caplog.records if r.name == "combiner_core.build"]
    assert len(said) == 1 and "60 cross-attention weights start random" in said[0], said
    assert "LOAD REPORT" not in caplog.text and "seem corrupted" not in caplog.text
    model = combiner.model
    assert isinstance(model, EncoderDecoderModel)
    # Pretrained weights are really in both halves ...
    pretrained = load_file(minilm_dir / "model.safetensors")
    key = next(k for k in pretrained if k.endswith("encoder.layer.0.attention.self.query.weight"))
    suffix = key.split("encoder.layer.0.", 1)[1]
    assert torch.equal(model.encoder.encoder.layer[0].get_submodule(suffix.rsplit(".", 1)[0]).weight, pretrained[key])
    assert torch.equal(model.decoder.bert.encoder.layer[0].get_submodule(suffix.rsplit(".", 1)[0]).weight, pretrained[key])
    # ... and cross-attention is new, with no counterpart in the checkpoint.
    cross = model.decoder.bert.encoder.layer[0].crossattention.self.query.weight
    assert not any("crossattention" in k for k in pretrained)
    assert cross.shape == (384, 384)
    # BERT vocabulary conventions: start with [CLS], end with [SEP], pad with [PAD].
    tok = combiner.decoder_tokenizer
    assert combiner.special_token_ids() == {
        "decoder_start_token_id": tok.cls_token_id,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.sep_token_id,
    }
    params = GenerationParams(strategy="beam", num_beams=2, max_new_tokens=6)
    before = generate_texts(combiner, DOCS, params)
    assert all(row[0].num_tokens > 0 for row in before)

    save_combiner(combiner, str(tmp_path / "bert2bert"))
    reloaded = load_combiner(str(tmp_path / "bert2bert"))
    assert [r[0].token_ids for r in generate_texts(reloaded, DOCS, params)] == [r[0].token_ids for r in before]
    # Stock transformers reads the same folder.
    stock = EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert")
    assert torch.equal(stock.decoder.bert.encoder.layer[0].crossattention.self.query.weight, cross)


def test_cross_attention_init_is_seeded(minilm_dir: Path) -> None:
    def cross(seed: int) -> torch.Tensor:
        c = warm_start_combiner(encoder_uri=str(minilm_dir), decoder_uri=str(minilm_dir), seed=seed)
        return c.model.decoder.bert.encoder.layer[0].crossattention.self.key.weight

    assert torch.equal(cross(1), cross(1))
    assert not torch.equal(cross(1), cross(2))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hub-style checkpoints of tiny models: each a folder with weights + tokenizer/processor."""
    root = tmp_path_factory.mktemp("hub")
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    return {
        "bert": tiny.save_pretrained_encoder(root / "bert", tiny.bert_config(bt), tokenizer=bt),
        "vit": tiny.save_pretrained_encoder(root / "vit", tiny.vit_config(), image_processor=tiny.vit_image_processor()),
        "gpt2": tiny.save_pretrained_decoder(root / "gpt2", tiny.gpt2_config(gt), tokenizer=gt),
        "bert-decoder": tiny.save_pretrained_decoder(root / "bert-decoder", tiny.bert_config(bt), tokenizer=bt),
        "trocr": tiny.save_pretrained_decoder(root / "trocr", tiny.trocr_config(bt), tokenizer=bt),
    }


@pytest.mark.parametrize(
    "encoder,decoder", [("bert", "gpt2"), ("vit", "gpt2"), ("vit", "bert-decoder"), ("vit", "trocr")]
)
def test_warm_start_from_checkpoints(checkpoints, encoder, decoder, tmp_path: Path) -> None:
    combiner = warm_start_combiner(
        encoder_uri=str(checkpoints[encoder]), decoder_uri=str(checkpoints[decoder]), seed=0
    )
    vision = encoder == "vit"
    assert isinstance(combiner.model, VisionEncoderDecoderModel if vision else EncoderDecoderModel)
    # The encoder's pretrained weights are loaded unchanged.
    original = AutoModel.from_pretrained(checkpoints[encoder])
    for name, tensor in original.state_dict().items():
        assert torch.equal(combiner.model.encoder.state_dict()[name], tensor), name
    # GPT-2 (48 wide) behind a 32-wide encoder needs the projection; others match.
    assert hasattr(combiner.model, "enc_to_dec_proj") == (decoder == "gpt2")
    params = GenerationParams(max_new_tokens=5)
    run = (lambda c: generate_images(c, IMAGES, params)) if vision else (lambda c: generate_texts(c, DOCS, params))
    first = [r[0].token_ids for r in run(combiner)]
    save_combiner(combiner, str(tmp_path / "c"))
    assert [r[0].token_ids for r in run(load_combiner(str(tmp_path / "c")))] == first


def test_warm_start_from_s3(checkpoints, s3_bucket: str) -> None:
    from combiner_core.storage import upload_dir

    upload_dir(checkpoints["bert"], f"{s3_bucket}/hub/bert")
    upload_dir(checkpoints["gpt2"], f"{s3_bucket}/hub/gpt2")
    remote = warm_start_combiner(encoder_uri=f"{s3_bucket}/hub/bert", decoder_uri=f"{s3_bucket}/hub/gpt2", seed=0)
    local = warm_start_combiner(encoder_uri=str(checkpoints["bert"]), decoder_uri=str(checkpoints["gpt2"]), seed=0)
    for name, tensor in local.model.state_dict().items():
        assert torch.equal(remote.model.state_dict()[name], tensor), name


def test_per_side_options(checkpoints) -> None:
    combiner = warm_start_combiner(
        encoder_uri=str(checkpoints["bert"]),
        decoder_uri=str(checkpoints["gpt2"]),
        encoder=EncoderOptions(config_overrides={"hidden_dropout_prob": 0.3}),
        decoder=DecoderOptions(config_overrides={"resid_pdrop": 0.2}, pad_token_id=0),
    )
    assert combiner.model.config.encoder.hidden_dropout_prob == 0.3
    assert combiner.model.config.decoder.resid_pdrop == 0.2
    assert combiner.special_token_ids()["pad_token_id"] == 0
    assert combiner.model.config.pad_token_id == 0
