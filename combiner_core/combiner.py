"""The Combiner: a model with what it takes to turn inputs into text."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .describe import Layout, Modality, modality_of
from .errors import SpecialTokenError


def input_token_limit(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None) -> int | None:
    """Longest encoder input a text model accepts: the smallest of its position limits."""
    encoder_config = getattr(config, "encoder", config)
    limits = [
        getattr(encoder_config, name, None)
        for name in ("max_position_embeddings", "n_positions", "max_source_positions")
    ]
    limits.append(getattr(tokenizer, "model_max_length", None))
    # Tokenizers without a limit report a huge sentinel (int(1e30)); T5 has
    # relative positions and no config limit either.
    real = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(real) if real else None


@dataclass
class Preprocessor:
    """A combiner's input side without its weights: what CPU-only stages need.

    Attributes:
        layout: as Combiner.layout.
        decoder_tokenizer: decodes generated ids; also tokenizes training targets.
        tokenizer: input tokenizer of text combiners, None for image ones.
        image_processor: image processor of image combiners, None for text ones.
        max_input_tokens: the encoder's input limit (text combiners).
    """

    layout: Layout
    decoder_tokenizer: PreTrainedTokenizerBase
    tokenizer: PreTrainedTokenizerBase | None = None
    image_processor: object | None = None
    max_input_tokens: int | None = None

    @property
    def modality(self) -> Modality:
        return modality_of(self.layout)

    @property
    def input_pad_token_id(self) -> int:
        """The id that pads encoder inputs (text combiners)."""
        tok = self.tokenizer or self.decoder_tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return candidate
        return 0


@dataclass
class Combiner:
    """An encoder-decoder model with its tokenizers and image processor.

    Attributes:
        model: EncoderDecoderModel, VisionEncoderDecoderModel, or a native seq2seq
            model (BART, T5, Marian...).
        decoder_tokenizer: turns generated ids into text (and targets into labels).
        tokenizer: turns input text into encoder ids; None for image combiners.
            Often the same object as `decoder_tokenizer` (bert2bert, BART, T5).
        image_processor: turns images into pixel_values; None for text combiners.
        layout: which transformers class family the model belongs to.
        source_uri: where the combiner was loaded from, or None if built in memory.
        weights_sha256: sha256 of the weights files as loaded (see
            `combiner_core.checkpoint.weights_digest`), None if built in memory.
    """

    model: PreTrainedModel
    decoder_tokenizer: PreTrainedTokenizerBase
    tokenizer: PreTrainedTokenizerBase | None = None
    image_processor: object | None = None
    layout: Layout = "encoder-decoder"
    source_uri: str | None = None
    weights_sha256: str | None = None

    @property
    def modality(self) -> Modality:
        return modality_of(self.layout)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_input_tokens(self) -> int | None:
        """Longest encoder input the model accepts (text combiners), from its config."""
        return self.preprocessor.max_input_tokens

    @property
    def preprocessor(self) -> Preprocessor:
        """What turns raw inputs into this combiner's model inputs (no weights)."""
        return Preprocessor(
            layout=self.layout,
            decoder_tokenizer=self.decoder_tokenizer,
            tokenizer=self.tokenizer,
            image_processor=self.image_processor,
            max_input_tokens=input_token_limit(self.model.config, self.tokenizer) if self.modality == "text" else None,
        )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Combiner:
        self.model.to(device=device, dtype=dtype)
        return self

    def special_token_ids(self) -> dict[str, int]:
        """decoder_start_token_id, pad_token_id and eos_token_id as generation uses them."""
        gen = self.model.generation_config
        ids = {
            "decoder_start_token_id": gen.decoder_start_token_id,
            "pad_token_id": gen.pad_token_id,
            "eos_token_id": gen.eos_token_id,
        }
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise SpecialTokenError(
                f"the combiner's generation config lacks {', '.join(missing)}; set them with "
                "combiner_core.set_special_tokens(combiner.model, ...) before generating or training"
            )
        eos = ids["eos_token_id"]
        ids["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
        return ids


def set_special_tokens(
    model: PreTrainedModel,
    *,
    decoder_start_token_id: int,
    pad_token_id: int,
    eos_token_id: int,
) -> None:
    """Write the three ids where both training (model.config) and generate look for them."""
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = decoder_start_token_id
        cfg.pad_token_id = pad_token_id
        cfg.eos_token_id = eos_token_id
    # EncoderDecoderModel's loss shifts labels using config.pad_token_id; the
    # decoder's own config is consulted by its causal-LM head.
    decoder_config = getattr(model.config, "decoder", None)
    if decoder_config is not None:
        decoder_config.pad_token_id = pad_token_id
        decoder_config.eos_token_id = eos_token_id


def special_tokens_from_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    *,
    decoder_start_token_id: int | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, int]:
    """Pick decoder_start / pad / eos ids from a decoder tokenizer, as transformers' docs do.

    BERT-style vocabularies start with [CLS] and end with [SEP]; GPT-2 style ones
    start with <|endoftext|> (bos) and have no pad token, so eos doubles as pad.
    Explicit arguments win.
    """
    start = decoder_start_token_id
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    missing = [
        name
        for name, value in (("decoder_start_token_id", start), ("eos_token_id", eos), ("pad_token_id", pad))
        if value is None
    ]
    if missing:
        raise SpecialTokenError(
            f"the decoder tokenizer ({type(tokenizer).__name__}) has no bos/cls, eos/sep or pad "
            f"token, so {', '.join(missing)} cannot be chosen; pass them explicitly "
            "(DecoderOptions(decoder_start_token_id=..., pad_token_id=..., eos_token_id=...))"
        )
    return {"decoder_start_token_id": start, "pad_token_id": pad, "eos_token_id": eos}
