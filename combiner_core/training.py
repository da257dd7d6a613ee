"""Training building blocks for combiners: targets, labels, collation, loss. No Ray here.

The conventions are transformers' own: labels are the target token ids ending in
eos, padded with -100 (ignored by the loss); the decoder reads the labels shifted
right by one, starting from `decoder_start_token_id`, with -100 replaced by
`pad_token_id` (transformers' `shift_tokens_right`). `sequence_loss` returns the
summed token loss and the token count, so gradient accumulation and several DDP
workers average over tokens, not over batches of uneven length; its mean equals
the loss transformers computes for the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .combiner import Combiner
from .errors import SpecialTokenError, TextInputError
from .images import fused_image_processor, model_pixel_values
from .preprocess import (
    collate_token_ids,
    decode_image,
    image_to_pixel_values,
    pad_sequences,
    text_from_bytes,
    tokenize_text,
)

IGNORE_INDEX = -100  # what torch's cross_entropy and transformers' losses skip


@dataclass(frozen=True)
class TrainingPair:
    """One (input, target) example ready for collation.

    Attributes:
        source: encoder token ids (text combiners); for image combiners uint8 pixels
            (3, H, W) at the model's input size from the fused image path
            (combiner_core.images), or a decoded RGB image where that path does not
            cover the checkpoint's processor.
        labels: target token ids, ending in eos, without the decoder start token.
        source_truncated, target_truncated: True when tokens were cut to fit.
    """

    source: list[int] | Image.Image | np.ndarray
    labels: list[int]
    source_truncated: bool = False
    target_truncated: bool = False


def _unwrap(model: torch.nn.Module) -> PreTrainedModel:
    # DistributedDataParallel (and FSDP-like wrappers) keep the model in .module.
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model  # type: ignore[return-value]


def check_special_tokens(model: torch.nn.Module) -> dict[str, int]:
    """The decoder_start / pad / eos ids the loss and generation use, checked.

    Raises SpecialTokenError when one is missing from model.config, when
    model.config and generation_config disagree (training and generation would
    start the decoder differently), or when an id is outside the decoder's
    vocabulary. Fix with combiner_core.set_special_tokens.
    """
    inner = _unwrap(model)
    config, gen = inner.config, inner.generation_config
    decoder_config = getattr(config, "decoder", config)
    vocab = getattr(decoder_config, "vocab_size", None) or getattr(config, "vocab_size", None)
    problems, ids = [], {}
    for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        gen_value = getattr(gen, name, None)
        if isinstance(gen_value, list):
            gen_value = gen_value[0] if gen_value else None
        if value is None:
            problems.append(f"model.config.{name} is not set")
            continue
        if gen_value is not None and gen_value != value:
            problems.append(f"model.config.{name}={value} but generation_config.{name}={gen_value}")
        if vocab is not None and not 0 <= value < vocab:
            problems.append(f"{name}={value} is outside the decoder vocabulary (size {vocab})")
        ids[name] = int(value)
    if problems:
        raise SpecialTokenError(
            "special token ids are not ready for training: "
            + "; ".join(problems)
            + ". Set them with combiner_core.set_special_tokens(model, decoder_start_token_id=..., "
            "pad_token_id=..., eos_token_id=...)."
        )
    return ids


def target_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    text: str | bytes | None,
    *,
    eos_token_id: int,
    max_tokens: int,
) -> tuple[list[int], bool]:
    """Label ids for one target text: its tokens (no special tokens) then eos.

    The decoder start token is not part of the labels: the model prepends it when
    it shifts them. Returns (ids, truncated). Raises TextInputError with cause
    "empty_target" for a missing or blank target.
    """
    if isinstance(text, bytes):
        text = text_from_bytes(text)
    if text is None or not isinstance(text, str) or not text.strip():
        raise TextInputError(
            f"target text is {'missing' if text is None else repr(text)}; every training row "
            "needs a non-empty target",
            cause="empty_target",
        )
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: a target needs room for one token and eos")
    ids = list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
    if not ids:
        raise TextInputError(f"target {text!r} has no tokens", cause="empty_target")
    truncated = len(ids) > max_tokens - 1
    return ids[: max_tokens - 1] + [eos_token_id], truncated


def encode_pair(
    combiner: Combiner,
    source: str | bytes | None,
    target: str | bytes | None,
    *,
    max_source_tokens: int | None,
    max_target_tokens: int,
    eos_token_id: int,
) -> TrainingPair:
    """Turn one raw (input, target) row into a TrainingPair.

    `source` is text for text combiners and encoded image bytes for image ones.
    Raises an InputError subclass (cause "empty_target", "empty_text",
    "corrupt_image"...) for a row that cannot be used.
    """
    labels, target_cut = target_token_ids(
        combiner.decoder_tokenizer, target, eos_token_id=eos_token_id, max_tokens=max_target_tokens
    )
    if combiner.modality == "image":
        data = source if source is None or isinstance(source, bytes) else bytes(source)
        # The generation jobs' preprocessing (a JPEG decoded at a reduced DCT scale, one
        # resize): photo-size images cost a fraction of a full decode plus the processor,
        # and the model trains on the pixels it will caption from.
        fused = fused_image_processor(combiner.image_processor)
        image = fused.pixels(data) if fused is not None else decode_image(data)
        return TrainingPair(source=image, labels=labels, target_truncated=target_cut)
    limit = max_source_tokens if max_source_tokens is not None else combiner.max_input_tokens
    tokens = tokenize_text(combiner.tokenizer, source, max_tokens=limit)
    return TrainingPair(
        source=tokens.input_ids, labels=labels, source_truncated=tokens.truncated, target_truncated=target_cut
    )


def pad_labels(rows: Sequence[Sequence[int]], *, pad_to_multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad label id lists with -100 into one (batch, longest) tensor."""
    return pad_sequences(rows, value=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of)


def collate_pairs(combiner: Combiner, pairs: Sequence[TrainingPair]) -> dict[str, torch.Tensor]:
    """Pad a list of TrainingPairs into model inputs plus `labels`.

    Text: input_ids / attention_mask padded with the input tokenizer's pad id.
    Images: pixel_values, the fused path's uint8 pixels normalized as the processor
    does, or the processor's own output for decoded images.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    if combiner.modality == "image":
        sources = [p.source for p in pairs]
        arrays = sum(isinstance(s, np.ndarray) for s in sources)
        if arrays == len(sources):
            pixels = model_pixel_values(combiner.image_processor, np.stack(sources))
        elif arrays == 0:
            pixels = image_to_pixel_values(combiner.image_processor, sources)
        else:
            raise ValueError("collate_pairs: a batch mixes fused-path pixels and decoded images; make every pair "
                             "with the same encode_pair")
        batch = {"pixel_values": pixels}
    else:
        batch = collate_token_ids(
            [p.source for p in pairs], pad_token_id=combiner.preprocessor.input_pad_token_id
        )
    batch["labels"] = pad_labels([p.labels for p in pairs])
    return batch


def decoder_inputs_from_labels(
    labels: torch.Tensor, *, decoder_start_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """decoder_input_ids (labels shifted right, as transformers does) and their mask.

    The mask marks the start token and every real label that is fed back; it is
    built from the labels rather than from `!= pad_token_id`, so decoders whose
    pad id equals their start or eos id (GPT-2 uses <|endoftext|> for all three)
    still attend to their start token.
    """
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    mask = torch.ones_like(labels)
    mask[:, 1:] = (labels[:, :-1] != IGNORE_INDEX).long()
    decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == IGNORE_INDEX, pad_token_id)
    return decoder_input_ids, mask


def sequence_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, special_ids: dict[str, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy over a batch, and the number of label tokens.

    `model` may be wrapped (DistributedDataParallel); `batch` holds the encoder
    inputs and `labels` (-100 padded). sum / count equals transformers' loss for
    the same batch (model(**batch).loss) whenever its own decoder mask is
    correct, i.e. when pad_token_id differs from decoder_start_token_id.
    """
    ids = special_ids or check_special_tokens(model)
    labels = batch["labels"]
    decoder_input_ids, decoder_mask = decoder_inputs_from_labels(
        labels, decoder_start_token_id=ids["decoder_start_token_id"], pad_token_id=ids["pad_token_id"]
    )
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_mask)
    logits = out.logits
    loss_sum = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (labels != IGNORE_INDEX).sum()
    return loss_sum, count


def freeze_encoder(model: torch.nn.Module) -> int:
    """Stop gradients into the encoder; returns how many parameters were frozen.

    Cross-attention, the decoder and the encoder-to-decoder projection stay trainable.
    """
    inner = _unwrap(model)
    encoder = inner.get_encoder()
    frozen = 0
    for param in encoder.parameters():
        if param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def parameters_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes in name order: equal digests, equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(_unwrap(model).named_parameters(), key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
