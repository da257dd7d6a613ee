"""Generation through combiner_core against transformers' own generate, on tiny models."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import tests.tiny as tiny
from combiner_core import (
    Combiner,
    GenerationParams,
    decode_image,
    generate,
    image_to_pixel_values,
    random_combiner,
    tokenize_text,
)
from combiner_core.preprocess import collate_token_ids

TEXTS = [
    "the red circle on the left",
    "a dog",
    "summary of the document text with a cat and a dog sat on the mat",
    "blue square in the top right",
]


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, color)
    # A second colour block so images differ in structure, not only in mean colour.
    image.paste((255 - color[0], color[2], color[1]), (0, 0, size[0] // 2, size[1] // 3))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


IMAGES = [_png((200, 30, 30), (40, 30)), _png((20, 200, 60), (64, 64)), _png((10, 10, 220), (17, 50))]


def _build(name: str) -> Combiner:
    bt, gt = tiny.bert_tokenizer(), tiny.gpt2_style_tokenizer()
    if name == "bert2bert":
        return random_combiner(encoder_config=tiny.bert_config(bt), decoder_config=tiny.bert_config(bt), decoder_tokenizer=bt)
    if name == "bert2gpt2":
        return random_combiner(
            encoder_config=tiny.bert_config(bt), decoder_config=tiny.gpt2_config(gt), tokenizer=bt, decoder_tokenizer=gt
        )
    processor = tiny.vit_image_processor()
    if name == "vit2gpt2":
        return random_combiner(
            encoder_config=tiny.vit_config(), decoder_config=tiny.gpt2_config(gt), decoder_tokenizer=gt, image_processor=processor
        )
    if name == "vit2bert":
        return random_combiner(
            encoder_config=tiny.vit_config(), decoder_config=tiny.bert_config(bt), decoder_tokenizer=bt, image_processor=processor
        )
    if name == "vit2trocr":
        return random_combiner(
            encoder_config=tiny.vit_config(), decoder_config=tiny.trocr_config(bt), decoder_tokenizer=bt, image_processor=processor
        )
    if name == "swin2gpt2":
        return random_combiner(
            encoder_config=tiny.swin_config(), decoder_config=tiny.gpt2_config(gt), decoder_tokenizer=gt, image_processor=processor
        )
    if name == "deit2bert":
        return random_combiner(
            encoder_config=tiny.deit_config(), decoder_config=tiny.bert_config(bt), decoder_tokenizer=bt, image_processor=processor
        )
    raise ValueError(name)


COMBOS = ["bert2bert", "bert2gpt2", "vit2gpt2", "vit2bert", "vit2trocr", "swin2gpt2", "deit2bert"]


@pytest.fixture(scope="module", params=COMBOS)
def combiner(request) -> Combiner:
    return _build(request.param)


def _rows(c: Combiner) -> list[dict[str, torch.Tensor]]:
    """Each input as its own batch of one."""
    if c.modality == "image":
        return [{"pixel_values": image_to_pixel_values(c.image_processor, [decode_image(b)])} for b in IMAGES]
    return [
        collate_token_ids([tokenize_text(c.tokenizer, t, max_tokens=64).input_ids], pad_token_id=c.tokenizer.pad_token_id)
        for t in TEXTS
    ]


def _batch(c: Combiner) -> dict[str, torch.Tensor]:
    if c.modality == "image":
        return {"pixel_values": image_to_pixel_values(c.image_processor, [decode_image(b) for b in IMAGES])}
    ids = [tokenize_text(c.tokenizer, t, max_tokens=64).input_ids for t in TEXTS]
    assert len({len(i) for i in ids}) > 1, "the batch must need padding"
    return collate_token_ids(ids, pad_token_id=c.tokenizer.pad_token_id)


def _hf_reference(c: Combiner, batch: dict[str, torch.Tensor], params: GenerationParams) -> list[tuple[int, ...]]:
    """transformers' generate, called directly with the same parameters."""
    kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=False)
    if params.strategy == "beam":
        kwargs.update(num_beams=params.num_beams, length_penalty=params.length_penalty, early_stopping=params.early_stopping)
    with torch.inference_mode():
        sequences = c.model.generate(**batch, **kwargs)
    eos, pad = c.model.generation_config.eos_token_id, c.model.generation_config.pad_token_id
    out = []
    for row in sequences[:, 1:].tolist():
        kept = []
        for t in row:
            kept.append(t)
            if t == eos:
                break
        while kept and kept[-1] == pad and pad != eos:
            kept.pop()
        out.append(tuple(kept))
    return out


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_matches_hf_generate_and_padded_batch_matches_rows(combiner: Combiner, strategy: str) -> None:
    params = GenerationParams(strategy=strategy, max_new_tokens=8, num_beams=3)
    batch = _batch(combiner)
    ours = [row[0].token_ids for row in generate(combiner, batch, params)]
    assert ours == _hf_reference(combiner, batch, params)
    one_by_one = [generate(combiner, row, params)[0][0].token_ids for row in _rows(combiner)]
    assert ours == one_by_one
    # Inputs differ, so a model that ignores its encoder would fail here.
    assert len(set(ours)) > 1, f"all inputs gave the same output {ours[0]}"


def test_beam_returns_ranked_candidates_with_scores(combiner: Combiner) -> None:
    params = GenerationParams(strategy="beam", num_beams=4, num_return_sequences=3, max_new_tokens=6)
    rows = generate(combiner, _batch(combiner), params)
    assert len(rows) == (len(IMAGES) if combiner.modality == "image" else len(TEXTS))
    for candidates in rows:
        assert len(candidates) == 3
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True)
        assert all(c.num_tokens == len(c.token_ids) <= 6 for c in candidates)


def test_sampling_is_seeded(combiner: Combiner) -> None:
    params = GenerationParams(strategy="sample", seed=7, top_k=0, temperature=1.5, num_return_sequences=2, max_new_tokens=6)
    first = generate(combiner, _batch(combiner), params)
    second = generate(combiner, _batch(combiner), params)
    assert [[c.token_ids for c in r] for r in first] == [[c.token_ids for c in r] for r in second]
    assert all(len(r) == 2 for r in first)
    other = generate(combiner, _batch(combiner), params.model_copy(update={"seed": 8}))
    assert [[c.token_ids for c in r] for r in other] != [[c.token_ids for c in r] for r in first]


def test_length_and_repetition_controls(combiner: Combiner) -> None:
    batch = _batch(combiner)
    minimum = generate(combiner, batch, GenerationParams(min_new_tokens=5, max_new_tokens=5))
    eos = combiner.model.generation_config.eos_token_id
    for row in minimum:
        assert row[0].num_tokens == 5 and eos not in row[0].token_ids[:4]
    no_repeat = generate(combiner, batch, GenerationParams(no_repeat_ngram_size=1, max_new_tokens=8))
    for row in no_repeat:
        ids = row[0].token_ids
        assert len(ids) == len(set(ids)), f"a token repeats despite no_repeat_ngram_size=1: {ids}"


def test_params_reject_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="num_beams >= 2"):
        GenerationParams(strategy="beam", num_beams=1)
    with pytest.raises(ValueError, match="num_return_sequences=5 > num_beams=4"):
        GenerationParams(strategy="beam", num_beams=4, num_return_sequences=5)
    with pytest.raises(ValueError, match="strategy=greedy would repeat"):
        GenerationParams(num_return_sequences=2)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GenerationParams(beams=3)
