"""The seven encoder/decoder combinations of the core tests (text and vision encoders,
BERT / GPT-2 / TrOCR decoders), built from tiny configs, and their inputs."""

from __future__ import annotations

import io

import torch
from PIL import Image

import tests.support.tiny as tiny
from combiner_core import (
    Combiner,
    decode_image,
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


def build(name: str) -> Combiner:
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


def rows(c: Combiner) -> list[dict[str, torch.Tensor]]:
    """Each input as its own batch of one."""
    if c.modality == "image":
        return [{"pixel_values": image_to_pixel_values(c.image_processor, [decode_image(b)])} for b in IMAGES]
    return [
        collate_token_ids([tokenize_text(c.tokenizer, t, max_tokens=64).input_ids], pad_token_id=c.tokenizer.pad_token_id)
        for t in TEXTS
    ]


def batch(c: Combiner) -> dict[str, torch.Tensor]:
    if c.modality == "image":
        return {"pixel_values": image_to_pixel_values(c.image_processor, [decode_image(b) for b in IMAGES])}
    ids = [tokenize_text(c.tokenizer, t, max_tokens=64).input_ids for t in TEXTS]
    assert len({len(i) for i in ids}) > 1, "the batch must need padding"
    return collate_token_ids(ids, pad_token_id=c.tokenizer.pad_token_id)
