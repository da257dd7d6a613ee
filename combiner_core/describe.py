"""What a checkpoint is, from its JSON files alone: no torch, no transformers, no weights.

A job's driver checks `model.uri` before it touches the output or starts Ray; importing
transformers' image processors pulls in torch (several seconds), and the driver never
runs the model, so it reads config.json and the names of the files instead.
`load_combiner` on the workers remains the full check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import (
    CheckpointNotFoundError,
    ManifestMismatchError,
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


# Decoders whose positions are RoBERTa / fairseq style: a token at position p reads
# row padding_idx + 1 + p of the table (row padding_idx is the pad token's).
_PADDED_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl")
# Relative position schemes: no table, so no limit from the config.
_RELATIVE_POSITIONS = ("t5", "mt5", "umt5", "longt5", "switch_transformers", "pix2struct")


def decoder_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder's part of a checkpoint's config.json (the whole config for native seq2seq)."""
    decoder = config.get("decoder")
    return decoder if isinstance(decoder, Mapping) else config


def max_new_tokens_limit(config: Mapping[str, Any]) -> int | None:
    """The most tokens the decoder of this config.json can generate, or None (no table).

    The decoder start token sits at position 0 and the k-th generated token is read at
    position k, so T new tokens read positions 0..T-1: the limit is the position
    table's size (GPT-2's n_positions, BERT / BART / Marian / TrOCR's
    max_position_embeddings; RoBERTa-style tables lose padding_idx + 1 rows). T5-style
    relative positions have no table and no limit. tests/test_engine.py checks that
    this equals the table the engine indexes, for every fast-path family.
    """
    dec = decoder_config(config)
    model_type = str(dec.get("model_type", ""))
    if model_type in _RELATIVE_POSITIONS:
        return None
    if model_type == "gpt2" or "n_positions" in dec:
        size = dec.get("n_positions")
    else:
        size = dec.get("max_target_positions") or dec.get("max_position_embeddings")
    if not isinstance(size, int) or size <= 0:
        return None
    if model_type in _PADDED_POSITIONS:
        size -= int(dec.get("pad_token_id") or 0) + 1
    return max(size, 1)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the driver needs to know about a checkpoint before a job starts."""

    uri: str
    layout: Layout
    model_type: str
    decoder_model_type: str | None
    weights_bytes: int = 0
    # The most tokens the decoder can generate (max_new_tokens_limit); None: no limit known.
    max_new_tokens: int | None = None
    # Which weights these are, without reading them: the manifest's weights_sha256, a hub
    # snapshot's commit, or a digest of the weight files' names, sizes and versions
    # (mtime / ETag). Equal ids, same weights; "" when unknown.
    weights_id: str = ""

    @property
    def modality(self) -> Modality:
        return modality_of(self.layout)


def describe_checkpoint(uri: str, *, storage_options: dict[str, Any] | None = None) -> CheckpointInfo:
    """Layout and modality of the checkpoint at `uri`, checking its tokenizer / image processor.

    Reads only config.json and a listing of the folder (local or any fsspec URI); for a
    hub id, config.json from the hub (or its local cache when HF_HUB_OFFLINE is set).
    Raises CheckpointNotFoundError, NotACombinerError, MissingTokenizerError or
    MissingImageProcessorError with what to do.
    """
    if is_hub_id(uri):
        config, snapshot = _hub_config(uri)
        return _info(uri, config, weights_bytes=0, weights_id=f"hub:{uri}@{snapshot}")
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
    versions = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: str(e.get("ETag") or e.get("etag") or e.get("mtime")
                                                                    or e.get("LastModified") or "") for e in listing}
    names = set(sizes)
    if not names:
        raise CheckpointNotFoundError(
            f"no checkpoint at '{uri}': nothing is there. Pass an existing folder (or s3:// prefix) "
            "holding config.json, weights and a tokenizer"
            + ("; for s3://, check the bucket and that your credentials can list it" if is_remote(uri)
               else _close_match(uri))
        )
    if "config.json" not in names:
        raise CheckpointNotFoundError(f"no config.json in {uri}: this folder is not a transformers checkpoint")
    with fs.open(f"{root}/config.json", "r") as fh:
        config = json.load(fh)
    layout = layout_of(config, uri=uri)  # NotACombinerError before the tokenizer is looked for
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
    weights_id = _check_file_sizes(fs, root, sizes, uri)
    if not weights_id:
        weights_id = "files:" + hashlib.sha256(json.dumps(sorted(
            (name, size, versions.get(name, "")) for name, size in sizes.items() if name.endswith(_WEIGHT_SUFFIXES)
        )).encode()).hexdigest()
    return _info(uri, config, weights_bytes=sum(v for k, v in sizes.items() if k.endswith(_WEIGHT_SUFFIXES)),
                 weights_id=weights_id)


def _check_file_sizes(fs: Any, root: str, sizes: dict[str, int], uri: str) -> str:
    """Weights cut short or changed in size: against the manifest's byte counts, and each
    safetensors file against its own header (8 bytes of length, the header, then the data
    it indexes). Reads a few kilobytes; the sha256 check stays with load_combiner.
    Returns the manifest's weights_sha256 ("" without a manifest)."""
    bad = []
    weights = ""
    if "combiner_manifest.json" in sizes:
        with fs.open(f"{root}/combiner_manifest.json", "r") as fh:
            manifest = json.load(fh)
        files, weights = manifest.get("files", {}), str(manifest.get("weights_sha256") or "")
        bad += [f"{name} is {sizes[name]} bytes, the manifest says {entry.get('bytes')}"
                for name, entry in files.items() if name in sizes and sizes[name] != entry.get("bytes", sizes[name])]
    for name in sorted(n for n in sizes if n.endswith(".safetensors") and not any(b.startswith(n + " ") for b in bad)):
        expected = _safetensors_size(fs, f"{root}/{name}")
        if isinstance(expected, str):
            bad.append(f"{name} {expected}")
        elif expected != sizes[name]:
            bad.append(f"{name} is {sizes[name]} bytes, its header says {expected}")
    if bad:
        raise ManifestMismatchError(
            f"{uri} is damaged: {'; '.join(bad)}. The copy is incomplete or was changed after "
            "saving; copy or save the combiner again"
        )
    return f"sha256:{weights}" if weights else ""


# Bytes per element of each safetensors dtype (the format's own list).
_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


def _safetensors_size(fs: Any, path: str) -> int | str:
    """The size a safetensors file has by its header, or what is wrong with the header:
    each tensor's dtype known, and its byte range as long as its shape says."""
    with fs.open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "is shorter than a safetensors header"
        length = int.from_bytes(head, "little")
        if length > 100 * 1024**2:  # safetensors caps its header at 100 MB
            return f"has a header length of {length} bytes: not a safetensors file"
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return "has a header that is not JSON"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object"
    end = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
            elements = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            return f"has a header entry {key!r} that is not a tensor (dtype, shape, data_offsets)"
        if dtype not in _SAFETENSORS_DTYPES:
            return f"has tensor {key!r} of unknown dtype {dtype!r}"
        if int(stop) - int(start) != elements * _SAFETENSORS_DTYPES[dtype]:
            return f"has tensor {key!r} whose bytes ({int(stop) - int(start)}) do not fit its shape {shape} and dtype {dtype}"
        end = max(end, int(stop))
    return 8 + length + end


def _info(uri: str, config: dict[str, Any], *, weights_bytes: int, weights_id: str = "") -> CheckpointInfo:
    decoder = config.get("decoder") if isinstance(config.get("decoder"), dict) else None
    return CheckpointInfo(
        uri=uri,
        layout=layout_of(config, uri=uri),
        model_type=str(config.get("model_type", "")),
        decoder_model_type=str(decoder.get("model_type")) if decoder else None,
        weights_bytes=weights_bytes,
        max_new_tokens=max_new_tokens_limit(config),
        weights_id=weights_id,
    )


def _hub_config(repo_id: str) -> tuple[dict[str, Any], str]:
    """config.json of a hub model and the snapshot (commit) it came from, or
    CheckpointNotFoundError saying what was looked for: the local folder of that name
    (it does not exist) and the hub."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"'{repo_id}' is no folder here ({local_path(repo_id).resolve()} does not exist){_close_match(repo_id)}"
    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and not _reachable(constants.ENDPOINT):
        raise CheckpointNotFoundError(
            f"{where}, and as a hub id it cannot be checked: the Hugging Face hub ({constants.ENDPOINT}) "
            "is not reachable from here. Fix the path, or run where the hub is reachable (or set "
            "HF_ENDPOINT to a mirror)"
        )
    try:
        path = hf_hub_download(repo_id, "config.json", local_files_only=offline)
    except GatedRepoError:
        raise CheckpointNotFoundError(
            f"{where}; on the hub '{repo_id}' is gated: accept its terms on the hub and set HF_TOKEN"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise CheckpointNotFoundError(
            f"{where}, and the Hugging Face hub has no model '{repo_id}' (or it is private: set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(
            f"{where}, and HF_HUB_OFFLINE is set with no cached copy of '{repo_id}' from the hub. Fix the "
            "path, or download the model where the hub is reachable"
        ) from None
    except EntryNotFoundError:
        raise CheckpointNotFoundError(f"the hub model '{repo_id}' has no config.json: not a transformers "
                                      "checkpoint") from None
    with open(path) as fh:
        config = json.load(fh)
    # hf_hub_download's cache: .../snapshots/<commit>/config.json
    return config, os.path.basename(os.path.dirname(path))


def _reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the hub's host opens (a closed network fails at once;
    hf_hub_download itself would retry for about 25 s before saying so)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _close_match(name: str) -> str:
    """'; did you mean X?' when a folder beside the one named is spelled almost alike."""
    import difflib

    path = local_path(name).resolve()
    try:
        siblings = [p.name for p in path.parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    # 0.7: one wrong letter in a four-letter name ('umt4' for 'umt5', 'flna' for 'flan')
    # scores 0.75, which difflib's usual 0.8 missed (a new user's trial)
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.7)
    return f"; did you mean {path.parent / close[0]}?" if close else ""
