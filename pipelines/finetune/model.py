"""Building the combiner a fine-tuning run starts from, through combiner_core's public API."""

from __future__ import annotations

import fsspec

from combiner_core import (
    Combiner,
    DecoderOptions,
    build_word_tokenizer,
    load_combiner,
    random_combiner,
    warm_start_combiner,
)
from combiner_core.storage import is_hub_id, is_remote, local_path

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
        from combiner_core import EncoderOptions

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


def check_model_paths(spec: ModelSpec) -> list[str]:
    """Driver-side checks before Ray starts: local paths that must exist."""
    problems = []
    candidates = []
    if spec.checkpoint is not None:
        candidates.append(("model.checkpoint.uri", spec.checkpoint.uri))
    if spec.warm_start is not None:
        candidates += [
            ("model.warm_start.encoder_uri", spec.warm_start.encoder_uri),
            ("model.warm_start.decoder_uri", spec.warm_start.decoder_uri),
        ]
    if spec.random is not None:
        candidates.append(("model.random.words_file", spec.random.words_file))
    for key, uri in candidates:
        # A words file is always a path; a checkpoint may be a hub id ("org/name").
        if is_remote(uri) or (is_hub_id(uri) and not key.endswith("words_file")):
            continue
        if not local_path(uri).exists():
            problems.append(f"{key}: {uri} does not exist; fix the path")
    return problems
