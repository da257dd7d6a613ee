"""combiner_core: build, load, save and run encoder-decoder ("combiner") models.

No Ray here: this package works alone on a laptop. Quick start:

    from combiner_core import warm_start_combiner, generate_texts, GenerationParams
    c = warm_start_combiner(encoder_uri="path/to/bert", decoder_uri="path/to/gpt2")
    print(generate_texts(c, ["some text"], GenerationParams(strategy="beam"))[0][0].text)
"""

from .build import DecoderOptions, EncoderOptions, random_combiner, warm_start_combiner
from .checkpoint import (
    MANIFEST_NAME,
    load_combiner,
    load_preprocessor,
    read_manifest,
    resolve_checkpoint,
    save_combiner,
    sha256_file,
)
from .combiner import Combiner, Preprocessor, set_special_tokens, special_tokens_from_tokenizer
from .errors import (
    CheckpointNotFoundError,
    CombinerError,
    ImageDecodeError,
    InputError,
    ManifestMismatchError,
    MissingImageProcessorError,
    MissingTokenizerError,
    NotACombinerError,
    SpecialTokenError,
    TextInputError,
    UnsafeCheckpointError,
    UnsupportedDecoderError,
    UnsupportedEncoderError,
)
from .families import CROSS_ATTENTION_DECODERS
from .generation import Generated, GenerationParams, generate, generate_images, generate_texts, hf_generate
from .engine import FAST_FAMILIES, EngineStats, GenerationEngine, default_slots, resolve_dtype
from .preprocess import (
    DEFAULT_MAX_IMAGE_PIXELS,
    TokenizedText,
    collate_token_ids,
    decode_image,
    image_to_pixel_values,
    pad_sequences,
    text_from_bytes,
    tokenize_batch,
    tokenize_text,
)
from .vocab import build_word_tokenizer

__all__ = [
    "CROSS_ATTENTION_DECODERS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "FAST_FAMILIES",
    "MANIFEST_NAME",
    "CheckpointNotFoundError",
    "Combiner",
    "CombinerError",
    "DecoderOptions",
    "EncoderOptions",
    "EngineStats",
    "Generated",
    "GenerationEngine",
    "GenerationParams",
    "ImageDecodeError",
    "InputError",
    "ManifestMismatchError",
    "MissingImageProcessorError",
    "MissingTokenizerError",
    "NotACombinerError",
    "Preprocessor",
    "SpecialTokenError",
    "TextInputError",
    "TokenizedText",
    "UnsafeCheckpointError",
    "UnsupportedDecoderError",
    "UnsupportedEncoderError",
    "build_word_tokenizer",
    "collate_token_ids",
    "decode_image",
    "default_slots",
    "generate",
    "generate_images",
    "generate_texts",
    "hf_generate",
    "image_to_pixel_values",
    "load_combiner",
    "load_preprocessor",
    "pad_sequences",
    "random_combiner",
    "read_manifest",
    "resolve_checkpoint",
    "resolve_dtype",
    "save_combiner",
    "set_special_tokens",
    "sha256_file",
    "special_tokens_from_tokenizer",
    "text_from_bytes",
    "tokenize_batch",
    "tokenize_text",
    "warm_start_combiner",
]
