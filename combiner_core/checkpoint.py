"""Loading and saving combiners in the Hugging Face layout, plus a manifest.

Layout of a saved combiner (what stock transformers reads, plus two extras):

    config.json, generation_config.json, model.safetensors   the model
    tokenizer files                                          input tokenizer (text) or
                                                             decoder tokenizer (image)
    preprocessor_config.json                                 image processor (image)
    decoder_tokenizer/                                       only when the decoder's
                                                             tokenizer differs (bert2gpt2)
    combiner_manifest.json                                   sha256 of every file,
                                                             library versions; written last
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderModel,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderModel,
)

from .combiner import (
    Combiner,
    Layout,
    Preprocessor,
    input_token_limit,
    set_special_tokens,
    special_tokens_from_tokenizer,
)
from .describe import TOKENIZER_FILES, layout_of
from .errors import (
    CheckpointNotFoundError,
    ManifestMismatchError,
    MissingImageProcessorError,
    MissingTokenizerError,
    ParameterError,
    UnsafeCheckpointError,
)
from .storage import fetch_dir, is_remote, local_path, looks_like_path, upload_dir

MANIFEST_NAME = "combiner_manifest.json"
DECODER_TOKENIZER_DIR = "decoder_tokenizer"
MANIFEST_FORMAT = 1

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# --- where a checkpoint is ------------------------------------------------------------


def resolve_checkpoint(
    uri: str, *, storage_options: dict[str, Any] | None = None, skip_weights: bool = False
) -> str:
    """A local folder (fetched from object storage if needed) or a hub id for `uri`.

    A URI with a scheme (s3://, gs://) is fetched to the local cache. A path that
    exists is used as is. Anything that looks like a path (starts with /, ., ~ or
    file://) but does not exist is an error; a bare "org/name" that is not a local
    folder is taken as a hub id, unless HF_HUB_OFFLINE is set. With `skip_weights`,
    a remote checkpoint is fetched without its weight files.
    """
    if is_remote(uri):
        skip = (".safetensors", *_PICKLE_SUFFIXES) if skip_weights else ()
        return str(fetch_dir(uri, storage_options=storage_options, skip_suffixes=skip))
    path = local_path(uri)
    if path.is_dir():
        return str(path)
    if path.exists():
        raise CheckpointNotFoundError(
            f"{uri} is a file, but a checkpoint is a folder (config.json, weights, tokenizer); "
            "pass the folder that holds it"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    is_path = looks_like_path(uri)
    if is_path or offline:
        reason = "the folder does not exist" if is_path else "HF_HUB_OFFLINE is set"
        raise CheckpointNotFoundError(
            f"no checkpoint at '{uri}': {reason}. Pass an existing local folder, an "
            "s3:// (or other fsspec) URI, or a hub id when online."
        )
    return uri


def _is_local_dir(resolved: str) -> bool:
    return Path(resolved).is_dir()


def check_weights_policy(resolved: str, *, uri: str, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuse pickle-only weights and remote code unless explicitly allowed."""
    if not _is_local_dir(resolved):
        return  # hub ids: transformers enforces use_safetensors / trust_remote_code itself
    folder = Path(resolved)
    if not (folder / "config.json").exists():
        raise CheckpointNotFoundError(
            f"no config.json in {uri}: this folder is not a transformers checkpoint"
        )
    files = [p.name for p in folder.iterdir() if p.is_file()]
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    pickles = sorted(name for name in files if name.endswith(_PICKLE_SUFFIXES))
    if not has_safetensors and pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{uri} holds only pickle weights ({', '.join(pickles)}), which can run arbitrary "
            "code when loaded. Convert them to safetensors, or pass allow_pickle=True "
            "(spec key model.allow_pickle) if you trust the source."
        )
    if not has_safetensors and not pickles:
        raise CheckpointNotFoundError(f"no weights (*.safetensors) in {uri}")
    check_remote_code(resolved, uri=uri, trust_remote_code=trust_remote_code)


def check_remote_code(resolved: str, *, uri: str, trust_remote_code: bool) -> None:
    """Refuse a checkpoint whose config maps to custom code, unless explicitly allowed."""
    if not _is_local_dir(resolved):
        return  # hub ids: transformers enforces trust_remote_code itself
    config = json.loads((Path(resolved) / "config.json").read_text())
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeCheckpointError(
            f"{uri} needs custom code from its auto_map ({sorted(config['auto_map'])}), which "
            "runs arbitrary Python. Pass trust_remote_code=True (spec key "
            "model.trust_remote_code) if you trust the source."
        )


def model_load_kwargs(*, allow_pickle: bool, trust_remote_code: bool) -> dict[str, Any]:
    # use_safetensors=True makes transformers refuse .bin files; None lets it fall back.
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": trust_remote_code}


# --- tokenizers and image processors ------------------------------------------------


def load_tokenizer(
    resolved: str, *, uri: str, trust_remote_code: bool = False, role: str = "tokenizer"
) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a resolved checkpoint, with a clear error when there is none."""
    if _is_local_dir(resolved) and not any(
        (Path(resolved) / name).exists() for name in TOKENIZER_FILES
    ):
        raise MissingTokenizerError(
            f"no {role} in {uri} (none of {', '.join(TOKENIZER_FILES)}). Save the tokenizer "
            f"into that folder, or pass its location explicitly (tokenizer_uri=...)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MissingTokenizerError(f"could not load the {role} from {uri}: {exc}") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 style vocabularies have no pad token; batching needs one, and eos is
        # what transformers' own examples pad with.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_image_processor(resolved: str, *, uri: str) -> object:
    if _is_local_dir(resolved) and not (Path(resolved) / "preprocessor_config.json").exists():
        raise MissingImageProcessorError(
            f"no image processor (preprocessor_config.json) in {uri}. Save one into that "
            "folder, or pass image_processor_uri=... pointing at the vision encoder's checkpoint."
        )
    try:
        # The PIL backend needs no torchvision and gives the same pixels on every host.
        return AutoImageProcessor.from_pretrained(resolved, backend="pil")
    except (OSError, ValueError) as exc:
        raise MissingImageProcessorError(f"could not load the image processor from {uri}: {exc}") from exc


# --- hashing and the manifest -------------------------------------------------------


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(file_hashes: dict[str, str]) -> str:
    """One sha256 for the weights: the file's own for a single file, else of the sorted list."""
    weights = {k: v for k, v in file_hashes.items() if k.endswith(".safetensors") or k.endswith(_PICKLE_SUFFIXES)}
    if len(weights) == 1:
        return next(iter(weights.values()))
    joined = "".join(f"{name}:{weights[name]}\n" for name in sorted(weights))
    return hashlib.sha256(joined.encode()).hexdigest()


def _hash_folder(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_NAME, ".complete")
    }


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("combiner", "torch", "transformers", "safetensors", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else None


def _verified_weights_sha256(folder: Path, uri: str) -> str:
    """Hash the weights; where a manifest exists, check every file it lists."""
    manifest = read_manifest(folder)
    if manifest is None:
        weights = {
            p.name: sha256_file(p)
            for p in folder.iterdir()
            if p.is_file() and p.name.endswith((".safetensors", *_PICKLE_SUFFIXES))
        }
        return weights_digest(weights)
    bad = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.exists():
            bad.append(f"{name} (missing)")
        elif sha256_file(path) != expected["sha256"]:
            bad.append(f"{name} (sha256 differs)")
    if bad:
        raise ManifestMismatchError(
            f"{uri} does not match its {MANIFEST_NAME}: {', '.join(bad)}. The copy is "
            "incomplete or was changed after saving; save the combiner again."
        )
    return manifest["weights_sha256"]


# --- load ---------------------------------------------------------------------------------


_MODEL_CLASSES = {
    "encoder-decoder": EncoderDecoderModel,
    "vision-encoder-decoder": VisionEncoderDecoderModel,
    "seq2seq": AutoModelForSeq2SeqLM,
}


def _combiner_class(config: Any, uri: str) -> tuple[type, Layout]:
    """The transformers class that loads a combiner of this config (describe.layout_of
    classifies it: the one classifier the driver's check and the load share)."""
    layout = layout_of(config.to_dict(), uri=uri)
    return _MODEL_CLASSES[layout], layout


def _load_preprocessor(
    resolved: str,
    config: Any,
    layout: Layout,
    *,
    uri: str,
    tokenizer_uri: str | None,
    image_processor_uri: str | None,
    trust_remote_code: bool,
    storage_options: dict[str, Any] | None,
) -> Preprocessor:
    def source(explicit: str | None) -> str:
        return resolve_checkpoint(explicit, storage_options=storage_options, skip_weights=True) if explicit else resolved

    tok_source, tok_uri = source(tokenizer_uri), tokenizer_uri or uri
    root_tokenizer = load_tokenizer(tok_source, uri=tok_uri, trust_remote_code=trust_remote_code)
    if layout == "vision-encoder-decoder":
        image_processor = load_image_processor(source(image_processor_uri), uri=image_processor_uri or uri)
        return Preprocessor(layout=layout, decoder_tokenizer=root_tokenizer, image_processor=image_processor)
    decoder_tok_dir = Path(tok_source) / DECODER_TOKENIZER_DIR
    decoder_tokenizer = (
        load_tokenizer(str(decoder_tok_dir), uri=f"{tok_uri}/{DECODER_TOKENIZER_DIR}", role="decoder tokenizer")
        if decoder_tok_dir.is_dir()
        else root_tokenizer
    )
    return Preprocessor(
        layout=layout,
        decoder_tokenizer=decoder_tokenizer,
        tokenizer=root_tokenizer,
        max_input_tokens=input_token_limit(config, root_tokenizer),
    )


def load_preprocessor(
    uri: str,
    *,
    tokenizer_uri: str | None = None,
    image_processor_uri: str | None = None,
    trust_remote_code: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Preprocessor:
    """A saved combiner's tokenizers / image processor, without loading (or fetching) weights.

    For CPU stages that tokenize or turn images into pixel values ahead of the
    model. Arguments as for `load_combiner`.
    """
    resolved = resolve_checkpoint(uri, storage_options=storage_options, skip_weights=True)
    if _is_local_dir(resolved) and not (Path(resolved) / "config.json").exists():
        raise CheckpointNotFoundError(f"no config.json in {uri}: this folder is not a transformers checkpoint")
    check_remote_code(resolved, uri=uri, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    _, layout = _combiner_class(config, uri)
    return _load_preprocessor(
        resolved, config, layout, uri=uri, tokenizer_uri=tokenizer_uri,
        image_processor_uri=image_processor_uri, trust_remote_code=trust_remote_code,
        storage_options=storage_options,
    )


def load_combiner(
    uri: str,
    *,
    tokenizer_uri: str | None = None,
    image_processor_uri: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    storage_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Combiner:
    """Load a saved combiner, a native seq2seq checkpoint, or a VisionEncoderDecoder one.

    Args:
        uri: local folder, s3:// (any fsspec) prefix, or a hub id when online.
        tokenizer_uri: where the tokenizer is, when it is not saved beside the model.
        image_processor_uri: likewise for the image processor of a vision combiner.
        allow_pickle: permit .bin (pickle) weights when no safetensors exist.
        trust_remote_code: permit checkpoints whose config needs custom code.
        storage_options: fsspec options for remote URIs (endpoint, profile...).
        device, dtype: where and in what precision to place the model.
    """
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        # before any download: torch's own message ("Torch not compiled with CUDA enabled")
        # comes from an assert deep in model.to()
        raise ParameterError(
            f"load_combiner({uri!r}, device={str(device)!r}): this process sees no CUDA device "
            f"(torch {torch.__version__}); pass device='cpu', or run it where a GPU and a CUDA build of torch are"
        )
    resolved = resolve_checkpoint(uri, storage_options=storage_options)
    check_weights_policy(resolved, uri=uri, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    cls, layout = _combiner_class(config, uri)
    kwargs = model_load_kwargs(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cls.from_pretrained(resolved, **kwargs)
    pre = _load_preprocessor(
        resolved, model.config, layout, uri=uri, tokenizer_uri=tokenizer_uri,
        image_processor_uri=image_processor_uri, trust_remote_code=trust_remote_code,
        storage_options=storage_options,
    )

    gen, cfg = model.generation_config, model.config
    if None in (gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id):
        ids = special_tokens_from_tokenizer(
            pre.decoder_tokenizer,
            **{
                name: _first_set(getattr(gen, name, None), getattr(cfg, name, None))
                for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id")
            },
        )
        set_special_tokens(model, **ids)

    digest = _verified_weights_sha256(Path(resolved), uri) if _is_local_dir(resolved) else None
    model.eval()
    if device is not None:
        model.to(device)
    return Combiner(
        model=model,
        decoder_tokenizer=pre.decoder_tokenizer,
        tokenizer=pre.tokenizer,
        image_processor=pre.image_processor,
        layout=layout,
        source_uri=uri,
        weights_sha256=digest,
    )


def _first_set(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


# --- save -----------------------------------------------------------------------------------


def save_combiner(
    combiner: Combiner,
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save `combiner` to a local folder or an fsspec URI; returns the manifest.

    Files are written to a local staging folder first, then copied, with the
    manifest last: a folder with a manifest is complete. `extra` is stored in the
    manifest (training metrics, data lineage...).
    """
    staging = Path(tempfile.mkdtemp(prefix="combiner-save-"))
    try:
        combiner.model.save_pretrained(staging)
        if combiner.modality == "image":
            combiner.decoder_tokenizer.save_pretrained(staging)
            if combiner.image_processor is None:
                raise MissingImageProcessorError("an image combiner must have an image processor to be saved")
            combiner.image_processor.save_pretrained(staging)
        else:
            (combiner.tokenizer or combiner.decoder_tokenizer).save_pretrained(staging)
            if combiner.tokenizer is not None and combiner.decoder_tokenizer is not combiner.tokenizer:
                combiner.decoder_tokenizer.save_pretrained(staging / DECODER_TOKENIZER_DIR)
        hashes = _hash_folder(staging)
        manifest = {
            "format": MANIFEST_FORMAT,
            "layout": combiner.layout,
            "modality": combiner.modality,
            "weights_sha256": weights_digest(hashes),
            "files": {
                name: {"sha256": digest, "bytes": (staging / name).stat().st_size}
                for name, digest in hashes.items()
            },
            "libraries": _library_versions(),
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "extra": extra or {},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        upload_dir(staging, uri, storage_options=storage_options, last=(MANIFEST_NAME,))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
