"""Bad inputs a user can hit, each with its clear error asserted by message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

import tests.support.tiny as tiny
from combiner_core import (
    decode_image,
    load_combiner,
    random_combiner,
    save_combiner,
    tokenize_text,
    warm_start_combiner,
)
from combiner_core.compatibility import CROSS_ATTENTION_DECODERS
from combiner_core.errors import (
    CheckpointNotFoundError,
    ImageDecodeError,
    MissingTokenizerError,
    TextInputError,
    UnsafeCheckpointError,
    UnsupportedDecoderError,
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-errors")
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    llama = LlamaConfig(
        vocab_size=len(gt), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    paths = {
        "bert": tiny.save_pretrained_encoder(root / "bert", tiny.bert_config(bt), tokenizer=bt),
        "llama": tiny.save_pretrained_decoder(root / "llama", llama, tokenizer=gt),
        "gpt2-no-tokenizer": tiny.save_pretrained_encoder(root / "gpt2-no-tok", tiny.gpt2_config(gt)),
    }
    combiner = random_combiner(encoder_config=tiny.bert_config(bt), decoder_config=tiny.bert_config(bt), decoder_tokenizer=bt)
    save_combiner(combiner, str(root / "combiner"))
    paths["combiner"] = root / "combiner"
    return paths


def test_decoder_without_cross_attention_is_refused(hub) -> None:
    with pytest.raises(UnsupportedDecoderError) as err:
        warm_start_combiner(encoder_uri=str(hub["bert"]), decoder_uri=str(hub["llama"]))
    message = str(err.value)
    assert "decoder model_type 'llama' (LlamaForCausalLM) has no cross-attention" in message
    assert "gpt2" in message and "bert" in message and "trocr" in message
    with pytest.raises(UnsupportedDecoderError, match="model_type 'vit' has no causal-LM head"):
        random_combiner(encoder_config=tiny.vit_config(), decoder_config=tiny.vit_config(), decoder_tokenizer=tiny.bert_tokenizer())


def test_every_listed_decoder_family_can_cross_attend() -> None:
    # The list in the error message must not lie about the installed transformers.
    import inspect

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    for family in CROSS_ATTENTION_DECODERS:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(family))]
        assert "encoder_hidden_states" in inspect.signature(cls.forward).parameters, family


def test_missing_tokenizer(hub) -> None:
    with pytest.raises(MissingTokenizerError, match=r"no decoder tokenizer in .*gpt2-no-tok \(none of tokenizer.json"):
        warm_start_combiner(encoder_uri=str(hub["bert"]), decoder_uri=str(hub["gpt2-no-tokenizer"]))


def test_missing_tokenizer_in_saved_combiner(hub, tmp_path: Path) -> None:
    folder = tmp_path / "no-tok"
    folder.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        (folder / f).write_bytes((hub["combiner"] / f).read_bytes())
    with pytest.raises(MissingTokenizerError, match="pass its location explicitly"):
        load_combiner(str(folder))
    # ... and the explicit location fixes it.
    assert load_combiner(str(folder), tokenizer_uri=str(hub["combiner"])).tokenizer is not None


@pytest.mark.parametrize("uri", ["/no/such/checkpoint", "./not-here", "file:///no/such/dir"])
def test_unknown_local_path(uri: str) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at .*the folder does not exist"):
        load_combiner(uri)


def test_hub_id_while_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        load_combiner("facebook/bart-large-cnn")


def test_file_instead_of_folder(hub) -> None:
    with pytest.raises(CheckpointNotFoundError, match="is a file, but a checkpoint is a folder"):
        load_combiner(str(hub["combiner"] / "config.json"))


def test_missing_s3_prefix(s3_bucket: str) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no files under s3://.*/nothing-here"):
        load_combiner(f"{s3_bucket}/nothing-here")


def test_pickle_only_checkpoint_needs_allow_pickle(hub, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for p in hub["combiner"].iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name != "combiner_manifest.json":
            (folder / p.name).write_bytes(p.read_bytes())
    reference = load_combiner(str(hub["combiner"]))
    torch.save(reference.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=True"):
        load_combiner(str(folder))
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        warm_start_combiner(encoder_uri=str(folder), decoder_uri=str(hub["bert"]))
    allowed = load_combiner(str(folder), allow_pickle=True)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(allowed.model.state_dict()[name], tensor)


def test_remote_code_needs_trust_remote_code(hub, tmp_path: Path) -> None:
    folder = tmp_path / "remote-code"
    folder.mkdir()
    for p in hub["combiner"].iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="needs custom code.*trust_remote_code=True"):
        load_combiner(str(folder))


def test_corrupt_image() -> None:
    png = bytearray(_png_bytes())
    truncated = bytes(png[: len(png) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated") as err:
        decode_image(truncated)
    assert err.value.cause == "corrupt_image" and err.value.stage == "decode"
    with pytest.raises(ImageDecodeError, match="not an image format PIL can read") as err:
        decode_image(b"%PDF-1.4 not an image at all")
    assert err.value.cause == "unknown_format"


def test_zero_byte_image() -> None:
    with pytest.raises(ImageDecodeError, match="image is zero bytes") as err:
        decode_image(b"")
    assert err.value.cause == "empty_image"


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_string(text: str) -> None:
    with pytest.raises(TextInputError, match="empty or whitespace-only") as err:
        tokenize_text(tiny.bert_tokenizer(), text, max_tokens=64)
    assert err.value.cause == "empty_text" and err.value.stage == "tokenize"


def test_non_utf8_text() -> None:
    with pytest.raises(TextInputError, match=r"not valid UTF-8 \(byte 3") as err:
        tokenize_text(tiny.bert_tokenizer(), b"abc\xff\xfe", max_tokens=64)
    assert err.value.cause == "not_utf8"


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("typed", "meant"), [("umt4", "umt5"), ("flna", "flan"), ("demo-sumarizer", "demo-summarizer")])
def test_a_misspelled_model_folder_gets_a_suggestion(typed: str, meant: str, tmp_path: Path) -> None:
    """One wrong or swapped letter, short names included (a four-letter name with one wrong
    letter scores 0.75 in difflib, under its usual 0.8 cutoff)."""
    from combiner_core.describe import describe_checkpoint

    for name in ("umt5", "flan", "demo-summarizer", "captioner"):
        (tmp_path / name).mkdir()
    with pytest.raises(CheckpointNotFoundError, match=f"did you mean {tmp_path / meant}\\?"):
        describe_checkpoint(str(tmp_path / typed))
