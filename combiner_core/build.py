"""Building combiners: warm-started from two checkpoints, or random from two configs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)
from transformers.utils import logging as hf_logging

from .checkpoint import (
    check_weights_policy,
    load_image_processor,
    load_tokenizer,
    model_load_kwargs,
    resolve_checkpoint,
)
from .combiner import Combiner, set_special_tokens, special_tokens_from_tokenizer
from .compatibility import decoder_class, encoder_class, is_vision_encoder
from .errors import MissingImageProcessorError, MissingTokenizerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderOptions:
    """Options for the encoder side of a warm start.

    Attributes:
        config_overrides: config attributes to set before loading (e.g. dropout).
        tokenizer_uri: text encoders: where the input tokenizer is, when not beside
            the encoder weights.
        image_processor_uri: vision encoders: where the image processor is, when not
            beside the encoder weights.
    """

    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_uri: str | None = None
    image_processor_uri: str | None = None


@dataclass(frozen=True)
class DecoderOptions:
    """Options for the decoder side of a warm start.

    Attributes:
        config_overrides: config attributes to set before loading.
        tokenizer_uri: where the decoder tokenizer is, when not beside the weights.
        decoder_start_token_id, pad_token_id, eos_token_id: override the ids chosen
            from the tokenizer ([CLS]/[SEP]/[PAD] for BERT, bos/eos/eos for GPT-2).
    """

    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_uri: str | None = None
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None


def _as_config(config: PretrainedConfig | Mapping[str, Any]) -> PretrainedConfig:
    if isinstance(config, PretrainedConfig):
        return config
    values = dict(config)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def _as_encoder(config: PretrainedConfig) -> PretrainedConfig:
    config.is_decoder = False
    config.add_cross_attention = False
    return config


def _as_decoder(config: PretrainedConfig) -> PretrainedConfig:
    decoder_class(config)  # refuses decoders that cannot cross-attend, naming the ones that can
    config.is_decoder = True
    config.add_cross_attention = True
    return config


def _assemble(
    encoder: torch.nn.Module | None,
    decoder: torch.nn.Module | None,
    *,
    encoder_config: PretrainedConfig,
    decoder_config: PretrainedConfig,
    vision: bool,
) -> EncoderDecoderModel | VisionEncoderDecoderModel:
    if vision:
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config)
        return VisionEncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config)
    return EncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)


def _finish(
    model: EncoderDecoderModel | VisionEncoderDecoderModel,
    *,
    vision: bool,
    tokenizer: PreTrainedTokenizerBase | None,
    decoder_tokenizer: PreTrainedTokenizerBase,
    image_processor: object | None,
    decoder: DecoderOptions,
) -> Combiner:
    ids = special_tokens_from_tokenizer(
        decoder_tokenizer,
        decoder_start_token_id=decoder.decoder_start_token_id,
        pad_token_id=decoder.pad_token_id,
        eos_token_id=decoder.eos_token_id,
    )
    set_special_tokens(model, **ids)
    # EncoderDecoderModel computes its loss over the decoder's vocabulary.
    model.config.vocab_size = model.config.decoder.vocab_size
    model.eval()
    return Combiner(
        model=model,
        decoder_tokenizer=decoder_tokenizer,
        tokenizer=None if vision else tokenizer,
        image_processor=image_processor if vision else None,
        layout="vision-encoder-decoder" if vision else "encoder-decoder",
    )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' per-load progress bar and LOAD REPORT table off for a warm start.

    The report lists the decoder's new cross-attention weights as MISSING (and may say
    "This checkpoint seem corrupted" about an untied LM-head bias): expected for a warm
    start, alarming to a newcomer. `_log_warm_start` says the same in one line.
    """
    names = ("transformers.modeling_utils", "transformers.utils.loading_report")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    bar = hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


def _log_warm_start(encoder_uri: str, encoder_info: dict, decoder_uri: str, decoder_info: dict) -> None:
    """One line: which weights start random (and which checkpoint weights go unused)."""
    missing = sorted(decoder_info.get("missing_keys", ()))
    cross = [k for k in missing if "crossattention" in k or "encoder_attn" in k]
    other = [k for k in missing if k not in cross]
    unused = sorted(set(encoder_info.get("unexpected_keys", ())) | set(decoder_info.get("unexpected_keys", ())))
    parts = [f"{len(cross)} cross-attention weights start random (train them)"]
    if other:
        parts.append(f"{len(other)} more decoder weights start random: {', '.join(other[:4])}"
                     + (", ..." if len(other) > 4 else ""))
    if encoder_info.get("missing_keys"):
        parts.append(f"{len(encoder_info['missing_keys'])} encoder weights start random")
    if unused:
        parts.append(f"{len(unused)} checkpoint weights are not used (e.g. {unused[0]})")
    log.info("warm start %s + %s: %s", encoder_uri, decoder_uri, "; ".join(parts))


def warm_start_combiner(
    *,
    encoder_uri: str,
    decoder_uri: str,
    encoder: EncoderOptions | None = None,
    decoder: DecoderOptions | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    storage_options: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Combiner:
    """Join a pretrained encoder and a pretrained decoder into a combiner.

    The decoder gets cross-attention layers, initialized at random (seeded by
    `seed` when given); an encoder whose hidden size differs from the decoder's
    is joined through transformers' `enc_to_dec_proj` projection. A vision
    encoder (ViT, DeiT, Swin, BEiT) gives a VisionEncoderDecoderModel; a text
    encoder an EncoderDecoderModel.

    Args:
        encoder_uri, decoder_uri: local folder, s3:// prefix, or hub id.
        encoder, decoder: per-side options.
        allow_pickle, trust_remote_code: see `load_combiner`.
        storage_options: fsspec options for remote URIs.
        seed: seeds the random initialization of cross-attention.
    """
    encoder = encoder or EncoderOptions()
    decoder = decoder or DecoderOptions()
    enc_path = resolve_checkpoint(encoder_uri, storage_options=storage_options)
    dec_path = resolve_checkpoint(decoder_uri, storage_options=storage_options)
    for path, uri in ((enc_path, encoder_uri), (dec_path, decoder_uri)):
        check_weights_policy(path, uri=uri, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    encoder_config = AutoConfig.from_pretrained(enc_path, trust_remote_code=trust_remote_code)
    for key, value in encoder.config_overrides.items():
        setattr(encoder_config, key, value)
    encoder_config = _as_encoder(encoder_config)
    encoder_class(encoder_config)
    vision = is_vision_encoder(encoder_config)

    decoder_config = AutoConfig.from_pretrained(dec_path, trust_remote_code=trust_remote_code)
    for key, value in decoder.config_overrides.items():
        setattr(decoder_config, key, value)
    decoder_config = _as_decoder(decoder_config)

    # Tokenizers and processors first: a missing one should fail before minutes of
    # weight loading.
    decoder_tokenizer = load_tokenizer(
        resolve_checkpoint(decoder.tokenizer_uri, storage_options=storage_options)
        if decoder.tokenizer_uri
        else dec_path,
        uri=decoder.tokenizer_uri or decoder_uri,
        trust_remote_code=trust_remote_code,
        role="decoder tokenizer",
    )
    tokenizer = image_processor = None
    if vision:
        image_processor = load_image_processor(
            resolve_checkpoint(encoder.image_processor_uri, storage_options=storage_options)
            if encoder.image_processor_uri
            else enc_path,
            uri=encoder.image_processor_uri or encoder_uri,
        )
    else:
        enc_tok_uri = encoder.tokenizer_uri or encoder_uri
        dec_tok_uri = decoder.tokenizer_uri or decoder_uri
        tokenizer = (
            decoder_tokenizer
            if enc_tok_uri == dec_tok_uri
            else load_tokenizer(
                resolve_checkpoint(enc_tok_uri, storage_options=storage_options)
                if encoder.tokenizer_uri
                else enc_path,
                uri=enc_tok_uri,
                trust_remote_code=trust_remote_code,
            )
        )

    load_kwargs = model_load_kwargs(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    with _quiet_loading():
        encoder_model, encoder_info = AutoModel.from_pretrained(
            enc_path, config=encoder_config, output_loading_info=True, **load_kwargs
        )
        if seed is not None:
            torch.manual_seed(seed)
        decoder_model, decoder_info = AutoModelForCausalLM.from_pretrained(
            dec_path, config=decoder_config, output_loading_info=True, **load_kwargs
        )
    _log_warm_start(encoder_uri, encoder_info, decoder_uri, decoder_info)
    model = _assemble(
        encoder_model,
        decoder_model,
        encoder_config=encoder_model.config,
        decoder_config=decoder_model.config,
        vision=vision,
    )
    return _finish(
        model,
        vision=vision,
        tokenizer=tokenizer,
        decoder_tokenizer=decoder_tokenizer,
        image_processor=image_processor,
        decoder=decoder,
    )


def random_combiner(
    *,
    encoder_config: PretrainedConfig | Mapping[str, Any],
    decoder_config: PretrainedConfig | Mapping[str, Any],
    decoder_tokenizer: PreTrainedTokenizerBase,
    tokenizer: PreTrainedTokenizerBase | None = None,
    image_processor: object | None = None,
    decoder: DecoderOptions | None = None,
    seed: int = 0,
) -> Combiner:
    """A combiner with random weights from two configs (tests, from-scratch training).

    Configs may be config objects or dicts with a `model_type` key. Text
    combiners take `tokenizer` (defaults to `decoder_tokenizer`); vision
    combiners take `image_processor`.
    """
    encoder_config = _as_encoder(_as_config(encoder_config))
    decoder_config = _as_decoder(_as_config(decoder_config))
    vision = is_vision_encoder(encoder_config)
    if vision and image_processor is None:
        raise MissingImageProcessorError(
            f"a vision encoder ({encoder_config.model_type}) needs an image_processor"
        )
    if decoder_tokenizer is None:
        raise MissingTokenizerError("random_combiner needs a decoder_tokenizer to decode outputs")
    torch.manual_seed(seed)
    model = _assemble(
        None, None, encoder_config=encoder_config, decoder_config=decoder_config, vision=vision
    )
    return _finish(
        model,
        vision=vision,
        tokenizer=tokenizer or decoder_tokenizer,
        decoder_tokenizer=decoder_tokenizer,
        image_processor=image_processor,
        decoder=decoder or DecoderOptions(),
    )
