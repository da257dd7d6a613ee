"""The encoder side, shared by the generation engine and the label scorer: the HF encoder
module as is, on inputs sorted by length and batched in length buckets (so it pads only
within a bucket), then enc_to_dec_proj when the combiner has one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..preprocess import collate_token_ids
from .model import is_composite
from .model.quantize import quantized_copy
from .model.t5 import t5_encoder_forward

# Encoder batches of token inputs, per device: the padding a batch may carry and the
# padded tokens it may hold. On CPU small tight batches won: the T5 encoder of t5-small
# shape over 128 inputs of 32-256 tokens (one thread, this 2-core AMD EPYC) took
# 12.0-12.9 s CPU in batches of up to 10% padding (9 batches, 91% real tokens) and
# 9.8-10.4 s at 3% (25 batches), 10.0-10.4 s at 3% and 1024 tokens (32 batches, 98.5%);
# BART of bart-base shape 21.2-21.5 -> 19.0 s at 3% and 1024 tokens. Less padding is
# part of it; the rest is activations that stay in cache ([b, heads, L, L] masks,
# [b, L, ffn] intermediates). A GPU wants large batches: there 10% and no token cap.
BUCKETS = {"cpu": (0.03, 1024), "cuda": (0.10, None)}


def length_buckets(order: list[int], lengths: list[int], cap: int, *, max_padding: float = 0.10,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Split inputs sorted by length (longest first) into encoder batches of at most `cap`
    inputs whose padding stays under `max_padding` of their tokens and whose padded size
    (inputs x longest) stays under `max_tokens` (a longer input gets a batch of its own)."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if cur:
            padded = lengths[cur[0]] * (len(cur) + 1)
            if (len(cur) >= cap or padded > (1.0 + max_padding) * (total + n)
                    or (max_tokens is not None and padded > max_tokens)):
                buckets.append(cur)
                cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        buckets.append(cur)
    return buckets


def cross_projection(model: torch.nn.Module) -> torch.nn.Module | None:
    """enc_to_dec_proj when a composite combiner's encoder and decoder widths differ (and
    the decoder has no cross_attention_hidden_size of its own), else None."""
    if is_composite(model) and (
        model.encoder.config.hidden_size != model.decoder.config.hidden_size
        and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None
    ):
        return model.enc_to_dec_proj
    return None


@dataclass
class Encoded:
    """One encoder batch: which inputs, their states [b, width, cross_dim] (projected),
    and each input's real length (the rest of its row is padding)."""

    inputs: list[int]
    states: torch.Tensor
    lengths: list[int]

    @property
    def width(self) -> int:
        return int(self.states.shape[1])

    def padding(self) -> torch.Tensor:
        """[b, width] True where a position is padding."""
        device = self.states.device
        return torch.arange(self.width, device=device)[None, :] >= torch.tensor(self.lengths, device=device)[:, None]


class SourceEncoder:
    """Encodes inputs for a combiner's model in its current device and dtype."""

    def __init__(self, model: torch.nn.Module, pad_token_id: int, quantize: str | None = None) -> None:
        self.model = model
        self.encoder = model.get_encoder()
        self.proj = cross_projection(model)
        if quantize == "int8":  # int8 copies sharing the float tensors; the model stays as it is
            self.encoder = quantized_copy(self.encoder)
            self.proj = None if self.proj is None else quantized_copy(self.proj)
        self.pad_token_id = pad_token_id
        # int8 encodes each text input as it would be alone. Padded beside others in a bucket, an
        # input's float32 sums (attention over more columns, GEMMs of another height) move
        # at rounding level, 1.4e-5 in a tiny T5's states; int8 turns that into other
        # quantization steps, 0.049 there, and a row's tokens then changed with the rows
        # it happened to be batched with. Alone, its int8 path is the same in any call
        # (int8_linear is exact per row, the decoder's attention is per row).
        self.one_at_a_time = quantize == "int8"
        self._t5 = t5_encoder_forward(self.encoder)  # T5 / mT5 in float32: bias and mask combined once

    def _states(self, out: torch.Tensor) -> torch.Tensor:
        return self.proj(out) if self.proj is not None else out

    def text(self, rows: list[torch.Tensor], lengths: list[int], order: list[int], cap: int) -> Iterator[Encoded]:
        """Token-id rows (indices `order`, longest first), in length buckets of at most `cap`."""
        device = self.model.device
        max_padding, max_tokens = BUCKETS.get(device.type, BUCKETS["cuda"])
        for bucket in length_buckets(order, lengths, cap, max_padding=max_padding, max_tokens=max_tokens):
            if self.one_at_a_time and not self._own_t5():
                # each input encoded alone, then zero-padded into the bucket's states: what
                # follows (cross K|V projections, admission) still runs once per bucket, and
                # reads only each row's own columns (one input per batch all through cost the
                # int8 BART benchmark a tenth of its time, in those per-batch steps)
                parts = [self._encode(rows[i][None].to(device), torch.ones_like(rows[i][None]).to(device))
                         for i in bucket]
                states = parts[0].new_zeros(len(bucket), lengths[bucket[0]], parts[0].shape[-1])
                for j, part in enumerate(parts):
                    states[j, : part.shape[1]] = part[0]
            else:
                # T5 / mT5 in int8 stay batched, each row's attention over its own columns
                # (model/t5.py); alone, t5-small's small per-input operations left the second
                # thread idle (int8 engine, 128 inputs: 6.5-6.8 s against 5.6 s)
                batch = collate_token_ids([rows[i] for i in bucket], pad_token_id=self.pad_token_id)
                own = [lengths[i] for i in bucket] if self.one_at_a_time else None
                states = self._encode(batch["input_ids"].to(device), batch["attention_mask"].to(device), own)
            yield Encoded(bucket, self._states(states), [lengths[i] for i in bucket])

    def _own_t5(self) -> bool:
        """The engine's own T5 / mT5 encoder forward runs (float32 weights, int8 copies included)."""
        return self._t5 is not None and self.model.dtype == torch.float32

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """Encoder states; `lengths` (T5 / mT5 only): each row attends over its own columns."""
        if self._own_t5():
            return self._t5(ids, mask, lengths)
        return self.encoder(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state

    def pixels(self, pixel_values: torch.Tensor, idx: list[int], cap: int) -> Iterator[Encoded]:
        """Images `idx` of a [n, channels, height, width] batch, `cap` at a time."""
        for s in range(0, len(idx), cap):
            chunk = idx[s : s + cap]
            first = chunk[0]
            if chunk == list(range(first, first + len(chunk))):  # a run of inputs: a view, no gather copy
                pixels = pixel_values[first : first + len(chunk)]
            else:
                pixels = pixel_values[chunk]
            pixels = pixels.to(device=self.model.device, dtype=self.model.dtype)
            states = self.encoder(pixel_values=pixels, return_dict=True).last_hidden_state
            yield Encoded(chunk, self._states(states), [int(states.shape[1])] * len(chunk))
