"""What a checkpoint is, from its JSON files alone: no torch, no transformers, no weights.

A job's driver checks `model.uri` before it touches the output or starts Ray; importing
transformers' image processors pulls in torch (several seconds), and the driver never
runs the model, so it reads config.json and the names of the files instead.
`load_combiner` on the workers remains the full check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .errors import (
    CheckpointNotFoundError,
    MissingImageProcessorError,
    MissingTokenizerError,
    NotACombinerError,
)
from .storage import get_filesystem, is_hub_id, is_remote, local_path

Layout = Literal["encoder-decoder", "vision-encoder-decoder", "seq2seq"]
Modality = Literal["text", "image"]

# Any one of these makes a folder hold a tokenizer (transformers' AutoTokenizer files).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "source.spm",
)
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def modality_of(layout: Layout) -> Modality:
    """What a combiner of this layout reads: images (vision-encoder-decoder) or text."""
    return "image" if layout == "vision-encoder-decoder" else "text"


def layout_of(config: dict[str, Any], *, uri: str) -> Layout:
    """The combiner layout of a config.json, or NotACombinerError."""
    model_type = config.get("model_type", "")
    if model_type == "encoder-decoder":
        return "encoder-decoder"
    if model_type == "vision-encoder-decoder":
        return "vision-encoder-decoder"
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    raise NotACombinerError(
        f"{uri} holds a '{model_type}' model, which is not an encoder-decoder. To join an "
        "encoder and a decoder, use warm_start_combiner(encoder_uri=..., decoder_uri=...)."
    )


@dataclass(frozen=True)
class CheckpointInfo:
    """What the driver needs to know about a checkpoint before a job starts."""

    uri: str
    layout: Layout
    model_type: str
    decoder_model_type: str | None
    weights_bytes: int = 0

    @property
    def modality(self) -> Modality:
        return modality_of(self.layout)


def describe_checkpoint(uri: str, *, storage_options: dict[str, Any] | None = None) -> CheckpointInfo | None:
    """Layout and modality of the checkpoint at `uri`, checking its tokenizer / image processor.

    Reads only config.json and a listing of the folder (local or any fsspec URI).
    Returns None for a hub id, which only transformers can resolve. Raises
    CheckpointNotFoundError, NotACombinerError, MissingTokenizerError or
    MissingImageProcessorError with what to do.
    """
    if is_hub_id(uri):
        return None
    if is_remote(uri):
        fs, root = get_filesystem(uri, storage_options)
        root = root.rstrip("/")
    else:
        fs, root = get_filesystem(str(local_path(uri)))
        root = str(local_path(uri)).rstrip("/")
    try:
        listing = fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        listing = []
    sizes = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in listing}
    names = set(sizes)
    if not names:
        raise CheckpointNotFoundError(
            f"no checkpoint at '{uri}': nothing is there. Pass an existing folder (or s3:// prefix) "
            "holding config.json, weights and a tokenizer"
            + ("; for s3://, check the bucket and that your credentials can list it" if is_remote(uri) else "")
        )
    if "config.json" not in names:
        raise CheckpointNotFoundError(f"no config.json in {uri}: this folder is not a transformers checkpoint")
    with fs.open(f"{root}/config.json", "r") as fh:
        config = json.load(fh)
    layout = layout_of(config, uri=uri)
    if not names & set(TOKENIZER_FILES):
        raise MissingTokenizerError(
            f"no tokenizer in {uri} (none of {', '.join(TOKENIZER_FILES)}). Save the tokenizer "
            "into that folder (combiner_core.save_combiner does)"
        )
    if layout == "vision-encoder-decoder" and IMAGE_PROCESSOR_FILE not in names:
        raise MissingImageProcessorError(
            f"no image processor ({IMAGE_PROCESSOR_FILE}) in {uri}. Save one into that folder "
            "(combiner_core.save_combiner does)"
        )
    decoder = config.get("decoder") if isinstance(config.get("decoder"), dict) else None
    return CheckpointInfo(
        uri=uri,
        layout=layout,
        model_type=str(config.get("model_type", "")),
        decoder_model_type=str(decoder.get("model_type")) if decoder else None,
        weights_bytes=sum(v for k, v in sizes.items() if k.endswith(_WEIGHT_SUFFIXES)),
    )
