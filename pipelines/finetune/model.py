"""Building the combiner a fine-tuning run starts from, through combiner_core's public API."""

from __future__ import annotations

import fsspec

from combiner_core import Combiner, load_combiner, random_combiner, warm_start_combiner
from combiner_core.build import DecoderOptions
from combiner_core.vocab import build_word_tokenizer

from .spec import ModelSpec, RandomSource


def _image_processor(size: int) -> object:
    # The PIL backend needs no torchvision and gives the same pixels on every host.
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size})


def _random(source: RandomSource, *, seed: int) -> Combiner:
    with fsspec.open(source.words_file, "rt") as fh:
        words = [w.strip() for w in fh if w.strip()]
    tokenizer = build_word_tokenizer(words, model_max_length=int(source.decoder_config.get("n_positions", 512)))
    decoder_config = dict(source.decoder_config)
    decoder_config.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    encoder_config = dict(source.encoder_config)
    image_processor = None
    if encoder_config.get("model_type") in {"vit", "deit", "beit"}:
        size = source.image_size or int(encoder_config.get("image_size", 224))
        encoder_config.setdefault("image_size", size)
        image_processor = _image_processor(size)
    else:
        encoder_config.setdefault("vocab_size", len(tokenizer))
        encoder_config.setdefault("pad_token_id", tokenizer.pad_token_id)
    return random_combiner(
        encoder_config=encoder_config,
        decoder_config=decoder_config,
        decoder_tokenizer=tokenizer,
        tokenizer=None if image_processor is not None else tokenizer,
        image_processor=image_processor,
        decoder=DecoderOptions(
            decoder_start_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        seed=seed,
    )


def build_start_model(spec: ModelSpec, *, seed: int) -> Combiner:
    """The combiner named by the spec's model section, before any training."""
    if spec.checkpoint is not None:
        return load_combiner(
            spec.checkpoint.uri,
            allow_pickle=spec.checkpoint.allow_pickle,
            trust_remote_code=spec.checkpoint.trust_remote_code,
        )
    if spec.warm_start is not None:
        ws = spec.warm_start
        from combiner_core.build import EncoderOptions

        return warm_start_combiner(
            encoder_uri=ws.encoder_uri,
            decoder_uri=ws.decoder_uri,
            encoder=EncoderOptions(),
            decoder=DecoderOptions(tokenizer_uri=ws.tokenizer_uri),
            allow_pickle=ws.allow_pickle,
            seed=seed,
        )
    assert spec.random is not None  # the spec validator guarantees one source
    return _random(spec.random, seed=seed)
