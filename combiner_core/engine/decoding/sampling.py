"""Sampling that depends only on (seed, row key, sample index, step): counter-based
Gumbel-max, so a row samples the same tokens in any batch, slot or order."""

from __future__ import annotations

import hashlib

import torch

_M32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' integer hash) on uint32 values held in int64.

    int64 products wrap modulo 2**64 (two's complement), so the low 32 bits are the
    uint32 product; masking keeps every value in [0, 2**32) and shifts logical.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def row_stream_key(seed: int, row_key: object, sample_index: int) -> int:
    """A 32-bit stream id for (seed, row key, which of the row's samples); stable across
    processes and Python versions (blake2b, not hash())."""
    if isinstance(row_key, bytes):
        raw = row_key
    elif isinstance(row_key, str):
        raw = b"s" + row_key.encode()
    else:
        raw = b"i" + str(int(row_key)).encode()
    digest = hashlib.blake2b(raw + b"|" + str(seed).encode() + b"|" + str(sample_index).encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


class GumbelSampler:
    """Counter-based Gumbel-max sampling: token = argmax(log p + G), with G drawn from
    hash(row stream, step, token index). The draw for a row depends on nothing but
    (seed, row key, sample index, step), so a row samples the same tokens whatever
    the batch, the slot or the order it runs in."""

    def __init__(self, vocab: int, device: torch.device) -> None:
        ids = torch.arange(vocab, dtype=torch.long, device=device)
        self.token_hash = mix32((ids * 0x9E3779B9 + 0x632BE5AB) & _M32)

    def gumbel(self, stream: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Gumbel noise [rows, vocab] for rows' stream ids and their step numbers."""
        h = mix32(stream ^ mix32((step * 0x85EBCA77 + 0x165667B1) & _M32))
        bits = mix32(h[:, None] ^ self.token_hash[None, :])
        # 24 random bits -> u in (0, 1), never 0 or 1: the log-logs stay finite.
        u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        return -torch.log(-torch.log(u))
