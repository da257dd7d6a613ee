"""combiner_core.training and the fine-tuning spec / metrics / data generator, without Ray."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

import tests.support.tiny as tiny
from combiner_core import random_combiner
from combiner_core.errors import ImageDecodeError, SpecialTokenError, TextInputError
from combiner_core.training import (
    IGNORE_INDEX,
    check_special_tokens,
    collate_pairs,
    decoder_inputs_from_labels,
    encode_pair,
    freeze_encoder,
    pad_labels,
    parameters_digest,
    sequence_loss,
    target_token_ids,
)
from pipelines import SpecError, load_spec
from pipelines.demo_data.shapes import caption_words, iter_examples
from pipelines.finetune import FinetuneSpec, plot_loss_curve
from pipelines.metrics import generation_metrics

REPO = Path(__file__).resolve().parents[2]


def _png(color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (40, 30), color)
    image.paste((255 - color[0], color[2], color[1]), (0, 0, 20, 10))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _vit2gpt2(tokenizer=None):
    tok = tokenizer or tiny.bert_tokenizer()  # distinct [PAD]/[BOS]/[EOS]
    return random_combiner(
        encoder_config=tiny.vit_config(),
        decoder_config=tiny.gpt2_config(tok),
        decoder_tokenizer=tok,
        image_processor=tiny.vit_image_processor(),
    )


def _bert2bert():
    tok = tiny.bert_tokenizer()
    return random_combiner(encoder_config=tiny.bert_config(tok), decoder_config=tiny.bert_config(tok), decoder_tokenizer=tok)


def test_pad_labels_uses_minus_100():
    labels = pad_labels([[5, 6, 2], [7, 2]])
    assert labels.tolist() == [[5, 6, 2], [7, 2, IGNORE_INDEX]]
    assert pad_labels([[1]], pad_to_multiple_of=4).shape == (1, 4)


def test_target_ids_end_in_eos_without_start_token_and_truncate():
    tok = tiny.bert_tokenizer()
    ids, cut = target_token_ids(tok, "a red circle", eos_token_id=tok.eos_token_id, max_tokens=16)
    assert ids[-1] == tok.eos_token_id and tok.bos_token_id not in ids and not cut
    assert len(ids) == 4
    ids, cut = target_token_ids(tok, "a red circle on the left", eos_token_id=tok.eos_token_id, max_tokens=3)
    assert cut and len(ids) == 3 and ids[-1] == tok.eos_token_id
    for bad in ("", "   ", None):
        with pytest.raises(TextInputError) as err:
            target_token_ids(tok, bad, eos_token_id=2, max_tokens=8)
        assert err.value.cause == "empty_target"


def test_decoder_inputs_shift_like_transformers():
    from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

    labels = pad_labels([[5, 6, 9, 2], [7, 2]])
    ids, mask = decoder_inputs_from_labels(labels, decoder_start_token_id=1, pad_token_id=0)
    assert torch.equal(ids, shift_tokens_right(labels, 0, 1))
    # Row 2 feeds back start, 7 and eos; its last input comes from padding.
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # GPT-2 style ids (start == pad): the start position stays visible.
    _, mask = decoder_inputs_from_labels(labels, decoder_start_token_id=0, pad_token_id=0)
    assert mask[:, 0].tolist() == [1, 1]


@pytest.mark.parametrize("name", ["vit2gpt2", "bert2bert"])
def test_sequence_loss_equals_transformers_loss(name):
    combiner = _vit2gpt2() if name == "vit2gpt2" else _bert2bert()
    ids = check_special_tokens(combiner.model)
    sources = [_png((200, 30, 30)), _png((20, 40, 220))] if name == "vit2gpt2" else ["a red circle", "the dog sat on the mat"]
    targets = ["a red circle on the left", "blue square"]
    pairs = [
        encode_pair(combiner, s, t, max_source_tokens=None, max_target_tokens=16, eos_token_id=ids["eos_token_id"])
        for s, t in zip(sources, targets, strict=True)
    ]
    batch = collate_pairs(combiner, pairs)
    assert (batch["labels"] == IGNORE_INDEX).any(), "the rows differ in length, so labels are padded"
    combiner.model.train()
    total, count = sequence_loss(combiner.model, batch)
    reference = combiner.model(**batch).loss
    assert int(count) == sum(len(p.labels) for p in pairs)
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-5)
    (total / count).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in combiner.model.parameters())


def test_encode_pair_rejects_bad_rows():
    combiner = _vit2gpt2()
    with pytest.raises(ImageDecodeError):
        encode_pair(combiner, b"not an image", "a cat", max_source_tokens=None, max_target_tokens=8, eos_token_id=2)
    with pytest.raises(TextInputError):
        encode_pair(combiner, _png((1, 2, 3)), "", max_source_tokens=None, max_target_tokens=8, eos_token_id=2)


def test_check_special_tokens_names_the_problem():
    combiner = _vit2gpt2()
    combiner.model.config.decoder_start_token_id = None
    with pytest.raises(SpecialTokenError, match="decoder_start_token_id"):
        check_special_tokens(combiner.model)
    combiner = _vit2gpt2()
    combiner.model.config.pad_token_id = 10_000
    with pytest.raises(SpecialTokenError, match="outside the decoder vocabulary"):
        check_special_tokens(combiner.model)


def test_freeze_encoder_and_digest():
    a, b = _vit2gpt2(), _vit2gpt2()
    assert parameters_digest(a.model) == parameters_digest(b.model)  # same seed, same weights
    frozen = freeze_encoder(a.model)
    assert frozen == sum(p.numel() for p in a.model.encoder.parameters())
    assert all(p.requires_grad for p in a.model.decoder.parameters())
    with torch.no_grad():
        next(b.model.decoder.parameters()).add_(1.0)
    assert parameters_digest(a.model) != parameters_digest(b.model)


def test_generation_metrics():
    scores = generation_metrics(
        ["a red circle on the left", "A  blue square on the right", "green"],
        ["a red circle on the left", "a blue square on the right", "a green triangle at the top"],
    )
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert 0 < scores["rougeL"] < 1
    perfect = generation_metrics(["a b c d"], ["a b c d"])
    assert perfect["exact_match"] == 1.0 and perfect["bleu"] == pytest.approx(100.0) and perfect["rouge1"] == 1.0
    with pytest.raises(ValueError, match="unknown metrics"):
        generation_metrics(["a"], ["a"], metrics=["meteor"])


def test_shapes_set_is_deterministic_and_captions_match_vocabulary():
    first = list(iter_examples("train", 20))
    assert first == list(iter_examples("train", 20))
    assert [r["image"] for r in first] != [r["image"] for r in iter_examples("heldout", 20)]
    words = set(caption_words())
    for row in first:
        assert set(row["caption"].split()) <= words
        assert Image.open(io.BytesIO(row["image"])).size == (64, 64)
    assert len({r["caption"] for r in iter_examples("train", 300)}) > 60  # many combinations, not a few


def test_loss_curve_png(tmp_path):
    target = tmp_path / "curve.png"
    plot_loss_curve([{"step": 0, "eval_loss": 3.0}, {"step": 5, "train_loss": 2.0, "eval_loss": 1.0}], target, title="t")
    assert Image.open(target).format == "PNG"


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "specs").glob("finetune*.yaml")), ids=lambda p: p.name)
def test_shipped_finetune_specs_validate(path):
    spec = load_spec(FinetuneSpec, path)
    assert spec.run.name and spec.export.uri


def test_bad_spec_lists_every_problem(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "model: {random: {encoder_config: {}, decoder_config: {model_type: gpt2}, words_file: w.txt}}\n"
        "data: {train: {uri: x, format: csv}, eval: {uri: y}}\n"
        "training: {epochs: 0}\n"
        "run: {name: 'bad name!', storage_path: runs}\n"
        "export: {uri: out}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(FinetuneSpec, spec)
    text = str(err.value)
    for key in ("data.train.format", "training.epochs", "run.name"):
        assert key in text
    with pytest.raises(SpecError, match="exactly one of model.checkpoint"):
        load_spec(FinetuneSpec, REPO / "jobs" / "specs" / "finetune_demo_captioner.yaml", ["model.checkpoint={uri: x}"])


def test_minilm_bert2bert_warm_start_learns_the_reverse_task(minilm_dir):
    """Real pretrained weights, the training building blocks, no Ray: eval loss falls far.

    The full run (jobs/specs/finetune_minilm_reverse.yaml, 125 steps on Ray Train)
    took eval loss from 10.95 to 2.30; here 30 steps must at least halve it.
    """
    from combiner_core import warm_start_combiner
    from pipelines.demo_data.reverse_words import iter_reverse_examples

    torch.manual_seed(0)
    combiner = warm_start_combiner(encoder_uri=str(minilm_dir), decoder_uri=str(minilm_dir), seed=0)
    ids = check_special_tokens(combiner.model)

    def batch(rows):
        pairs = [
            encode_pair(combiner, r["text"], r["target"], max_source_tokens=32, max_target_tokens=16,
                        eos_token_id=ids["eos_token_id"])
            for r in rows
        ]
        return collate_pairs(combiner, pairs)

    eval_batch = batch(list(iter_reverse_examples("eval", 32)))

    def eval_loss() -> float:
        combiner.model.eval()
        with torch.no_grad():
            total, count = sequence_loss(combiner.model, eval_batch, special_ids=ids)
        return float(total / count)

    before = eval_loss()
    optimizer = torch.optim.AdamW(combiner.model.parameters(), lr=1e-4)
    train = list(iter_reverse_examples("train", 30 * 16))
    combiner.model.train()
    for step in range(30):
        total, count = sequence_loss(combiner.model, batch(train[step * 16 : (step + 1) * 16]), special_ids=ids)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(combiner.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        combiner.model.train()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_finetune_refuses_to_replace_a_saved_model_unless_asked(tmp_path: Path) -> None:
    """The shipped demo spec exports to models/demo-captioner: a fresh clone must not
    overwrite it by running the README's training command without saying so."""
    from pipelines.finetune import preflight

    spec = load_spec(
        FinetuneSpec, REPO / "jobs" / "specs" / "finetune_demo_captioner.yaml",
        [f"run.storage_path={tmp_path / 'runs'}", f"model.random.words_file={REPO / 'jobs' / 'specs' / 'finetune_demo_captioner.yaml'}",
         f"data.train.uri={tmp_path}", f"data.eval.uri={tmp_path}", "data.test=null"],
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "image": [b"x"], "caption": ["c"]}), tmp_path / "part-0.parquet")
    with pytest.raises(SpecError, match="export.uri: .*demo-captioner already holds a combiner .*export.overwrite=true"):
        preflight(spec)
    preflight(spec.model_copy(update={"export": spec.export.model_copy(update={"overwrite": True})}))
    preflight(spec.model_copy(update={"export": spec.export.model_copy(update={"uri": str(tmp_path / "new")})}))


def test_demo_data_never_replaces_a_shipped_sample_silently(tmp_path: Path) -> None:
    import importlib.util

    loader = importlib.util.spec_from_file_location("make_demo_data", REPO / "jobs" / "make_demo_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)

    def writer(text: str):
        def write(folder: Path) -> list[Path]:
            (folder / "s.txt").write_text(text)
            return [folder / "s.txt"]
        return write

    shipped = tmp_path / "sample"
    assert module._bundled(writer("v1"), shipped, force=False)[0].endswith("(written)")  # nothing shipped yet
    assert module._bundled(writer("v1"), shipped, force=False)[0].endswith("(unchanged)")
    with pytest.raises(SystemExit, match="s.txt would change .* --force"):
        module._bundled(writer("v2"), shipped, force=False)
    assert (shipped / "s.txt").read_text() == "v1"
    module._bundled(writer("v2"), shipped, force=True)
    assert (shipped / "s.txt").read_text() == "v2"


def test_image_pairs_take_the_generation_jobs_fused_path(monkeypatch):
    """encode_pair decodes images as the caption job does (uint8 at the model's size,
    JPEGs at a reduced DCT scale); collate normalizes them as the processor does: a PNG
    gives the processor's pixel values, a photo-size JPEG values within a few levels.
    A processor the fused path does not cover keeps decoded images and the processor."""
    import numpy as np

    import combiner_core.training as training
    from combiner_core import decode_image, image_to_pixel_values
    from pipelines.demo_data.photos import photo_bytes

    combiner = _vit2gpt2()
    eos = check_special_tokens(combiner.model)["eos_token_id"]
    photo, png = photo_bytes(1600, 1200, seed=3), _png((30, 160, 90))

    def pair(source):
        return encode_pair(combiner, source, "a red circle", max_source_tokens=None, max_target_tokens=16,
                           eos_token_id=eos)

    pairs = [pair(photo), pair(png)]
    assert all(isinstance(p.source, np.ndarray) and p.source.dtype == np.uint8 for p in pairs)
    got = collate_pairs(combiner, pairs)["pixel_values"]
    want = image_to_pixel_values(combiner.image_processor, [decode_image(photo), decode_image(png)])
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
    # draft-decoded JPEG, in 8-bit levels (ViT normalizes (x / 255 - 0.5) / 0.5): measured mean
    # 0.23, largest 2; the bounds are test_images.py's for draft decoding
    levels = (got[0] - want[0]).abs() * 255 / 2
    assert levels.mean() < 2.0 and levels.max() < 48
    with pytest.raises(ImageDecodeError):
        pair(b"not an image")
    monkeypatch.setattr(training, "fused_image_processor", lambda processor: None)
    plain = [pair(photo), pair(png)]
    assert all(isinstance(p.source, Image.Image) for p in plain)
    torch.testing.assert_close(collate_pairs(combiner, plain)["pixel_values"], want)
    with pytest.raises(ValueError, match="mixes fused-path pixels and decoded images"):
        collate_pairs(combiner, [pairs[0], plain[1]])
