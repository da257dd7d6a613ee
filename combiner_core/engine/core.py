"""GenerationEngine: in-flight batched generation for combiners (no Ray here).

How a call runs (this module is only the loop; each step lives in a room of its own):

1. Encode (encoder.py): inputs sorted by length and encoded in length buckets, then
   enc_to_dec_proj when the combiner has one; each input's cross-attention K/V are
   computed once per layer, right after its bucket is encoded (model/runner.py).
2. Schedule (scheduler.py): a fixed set of decoder slots (each holding one input with
   all of its beams or samples) steps together; a finished input's slot is refilled
   at once with the next encoded input, and at the tail the active slots are
   compacted to a prefix, so no finished row is computed.
3. Step (model/runner.py over a DecoderDescription, then decoding/): greedy, sampling and
   beam search are vectorized over slots at different lengths, with HF's logits
   processors re-done per row and HF's beam bookkeeping per slot.
4. Collect (decoding/results.py): finished slots become Generated candidates.

A decoder family without a fast path, or a setting the engine does not implement,
runs HF `generate` instead (reference.py; `fast_path` False, `fallback_reason` says
why, logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch

from ..combiner import Combiner
from ..errors import ModalityError, ParameterError
from ..params import GenerationParams
from .decoding import (
    DecodeState,
    Decoding,
    DecodingPlan,
    GumbelSampler,
    Unsupported,
    beam_step,
    collect,
    fit_positions,
    processors_to,
    resolve_decoding_plan,
    token_step,
)
from .encoder import Encoded, SourceEncoder
from .model import DecoderRunner, UnsupportedFamily, decoder_family, extract_decoder, load_native
from .model.packed import pack_description, packing_available
from .model.quantize import check_quantize, quantize_description, quantized_copy
from .notices import warn_once
from .outputs import EngineStats, Generated
from .reference import hf_generate
from .scheduler import CrossBatch, Slots

log = logging.getLogger(__name__)

# Default decoder rows (slots x hypotheses per input) in flight.
# CPU: measured on the 2-core development machine with the benchmark's small model
# (engine alone, 512 inputs, 1 thread): greedy 16 / 32 / 64 / 128 / 256 rows gave
# 6.8k / 8.2k / 8.7k / 8.4k / 9.4k tokens/s and beam-4 64 / 128 / 256 rows 2.1k /
# 2.3k / 2.4k: flat from 64 rows on, while the cache and the logits grow linearly;
# the base-size model is compute-bound from 32 rows on.
# GPU (not measured: no GPU at hand): a decode step is bound by reading the weights
# until a few hundred rows; 256 rows keeps an H100-class GPU busy for base-size
# decoders while their cache at 128 new tokens stays near 1.2 GB in bfloat16.
DEFAULT_ROWS = {"cpu": 64, "cuda": 256}


def default_slots(device: torch.device, group: int) -> int:
    """Slots for a device when the caller gives none: a row budget split among inputs' hypotheses."""
    rows = DEFAULT_ROWS.get(device.type, DEFAULT_ROWS["cpu"])
    return max(1, rows // max(1, group))


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The engine dtype for a spec value: auto = bfloat16 on CUDA, float32 elsewhere.

    Accepts auto, float32/fp32, bfloat16/bf16, float16/fp16, or a torch.dtype.
    """
    if isinstance(name, torch.dtype):
        return name
    device = torch.device(device)
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ParameterError(f"dtype {name!r}: expected one of auto, {', '.join(_DTYPES)}") from None


class GenerationEngine:
    """Generates for a combiner with in-flight batching; reusable across calls (actors).

    Args:
        combiner: the model with its tokenizers.
        params: decoding parameters (greedy / beam / sample and their settings).
        slots: inputs decoded at once (each with all of its beams or samples). None:
            `default_slots` for the device (64 decoder rows on CPU, 256 on CUDA).
        dtype: engine dtype (auto, float32, bfloat16, float16, a torch.dtype, or None
            for the model's own). A dtype different from the model's casts the
            combiner's model in place: an engine owns its model for generation.
        cuda_graphs: capture the decode step in CUDA graphs on CUDA devices.
        static_shapes: run every step at the shapes a CUDA graph captures (slots in
            power-of-two buckets, every source and target column). None: only where
            CUDA graphs run (they imply static shapes whatever this says). True on CPU
            runs the graph path's arithmetic eagerly, which is how the tests check it.
        native: on CPU in float32 with exact shapes, run the decoder layers through the
            native step (model/native_step.cpp, built on first use). False, or no
            compiler, runs the torch step: the same arithmetic up to float rounding.
        quantize: "int8" (CPU, float32 only; model/quantize.py): every linear of the
            encoder, decoder and LM head in int8 with per-channel weight scales and
            per-row dynamic activation scales, as CTranslate2's int8. The combiner's
            model is not changed (the encoder runs an int8 copy sharing its tensors).
            The native step runs it too (the same packed weights and arithmetic).

    Attributes:
        fast_path: True when the engine runs its own decoder; False when it runs HF
            `generate` (family without a fast path, or an unsupported setting).
        fallback_reason: why fast_path is False, else None.
        native_step: True once a call ran the native CPU decode step (see `native`).
        quantize: "int8" or None, as given.
        stats: cumulative EngineStats.
    """

    def __init__(
        self,
        combiner: Combiner,
        params: GenerationParams | None = None,
        *,
        slots: int | None = None,
        dtype: str | torch.dtype | None = "auto",
        cuda_graphs: bool = True,
        static_shapes: bool | None = None,
        native: bool = True,
        quantize: str | None = None,
    ) -> None:
        self.combiner = combiner
        model = combiner.model
        self.params = fit_positions(params or GenerationParams(), model)
        self.device = model.device
        self.dtype = model.dtype if dtype is None else resolve_dtype(dtype, self.device)
        if model.dtype != self.dtype:
            log.info("casting the combiner's model from %s to %s for generation", model.dtype, self.dtype)
            model.to(dtype=self.dtype)
        self.cuda_graphs, self.static_shapes, self.native = cuda_graphs, static_shapes, native
        check_quantize(quantize, self.device, self.dtype)
        self.quantize = quantize
        self._fallback_model: torch.nn.Module | None = None  # int8: HF generate's quantized copy
        self.stats = EngineStats()
        self.family = decoder_family(model)
        self.ids = combiner.special_token_ids()  # raises SpecialTokenError when ids are missing
        self.hf_config = self.params.to_generation_config(model.generation_config)
        self.fallback_reason: str | None = None
        self.plan: DecodingPlan | None = None
        try:
            if model.training:
                raise Unsupported("the model is in training mode (dropout would differ)")
            self.desc = extract_decoder(model)
            if quantize == "int8":
                self.desc = quantize_description(self.desc)
            self.plan = resolve_decoding_plan(model, self.hf_config, seed=self.params.seed, vocab=self.desc.vocab_size)
            processors_to(self.plan.processors, self.device)
        except (UnsupportedFamily, Unsupported) as exc:
            self.fallback_reason = str(exc)
            warn_once(log, ("fallback", self.family, self.fallback_reason),
                      "generation engine: decoder family '%s' runs HF generate instead of the fast path: %s",
                      self.family, self.fallback_reason)
        if quantize == "int8" and self.fallback_reason is not None:
            self._fallback_model = quantized_copy(model)
        group = self.plan.group if self.plan else 1
        self.slots = slots if slots is not None else default_slots(self.device, group)
        if self.slots < 1:
            raise ValueError(f"slots={self.slots}: need at least 1")
        if (self.fast_path and quantize is None and self.device.type == "cpu" and self.dtype == torch.float32
                and packing_available()):
            # the step's matmuls on weights reordered once (model/packed.py: MKL repacks
            # them on every call at decode shapes)
            self.desc = pack_description(self.desc, rows=self.slots * group)
        self._decoding: Decoding | None = None
        if self.fast_path:
            self._encoder = SourceEncoder(model, combiner.preprocessor.input_pad_token_id, quantize)
            pad, start = self.desc.pos_padding_idx, self.plan.start_id
            self._start_position = self.desc.pos_offset if pad is None else (pad if start == pad else pad + 1)

    @property
    def fast_path(self) -> bool:
        return self.fallback_reason is None

    @property
    def native_step(self) -> bool:
        """True once a call has run the decoder layers through the native CPU step."""
        return self._decoding is not None and self._decoding.runner._native is not None

    # ------------------------------------------------------------------ public API

    @torch.inference_mode()
    def generate_token_ids(
        self, inputs: Sequence[torch.Tensor], row_keys: Sequence[object] | None = None
    ) -> list[list[Generated]]:
        """Generate for unpadded encoder token ids (one 1-D tensor per input), in input order.

        row_keys: one stable key per input (row id); sampling draws depend only on
        (seed, key), so a row samples the same output in any batch or slot. Default:
        the input's position in this call.
        """
        rows = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in inputs]
        if not rows:
            return []
        if any(len(r) == 0 for r in rows):
            raise ValueError("an input has no tokens; tokenize with special tokens or drop it")
        self._check_token_ids(rows)
        if self.combiner.modality != "text":
            raise ModalityError(f"this combiner takes images ({self.combiner.layout}); use generate_pixels")
        if not self.fast_path:
            return self._fallback_tokens(rows)
        lengths = [len(r) for r in rows]
        return self._run(lengths, row_keys,
                         lambda idx: self._cross(self._encoder.text(rows, lengths, idx, max(self.slots, len(idx)))))

    @torch.inference_mode()
    def generate_pixels(
        self, pixel_values: torch.Tensor, row_keys: Sequence[object] | None = None
    ) -> list[list[Generated]]:
        """Generate for a batch of preprocessed images [n, channels, height, width], in input order."""
        if self.combiner.modality != "image":
            raise ModalityError(f"this combiner takes text ({self.combiner.layout}); use generate_token_ids")
        n = int(pixel_values.shape[0])
        if n == 0:
            return []
        if not self.fast_path:
            return self._fallback_pixels(pixel_values)
        return self._run([1] * n, row_keys,
                         lambda idx: self._cross(self._encoder.pixels(pixel_values, idx, len(idx))))

    def _check_token_ids(self, rows: list[torch.Tensor]) -> None:
        """Ids outside the encoder's embedding table: a ValueError naming the input, instead of
        torch's "index out of range in self" from deep in the encoder."""
        try:
            table = self.combiner.model.get_encoder().get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return
        size = getattr(table, "num_embeddings", None)
        if size is None:
            return
        ids = torch.cat(rows)
        if int(ids.min()) >= 0 and int(ids.max()) < size:
            return
        i = next(i for i, r in enumerate(rows) if int(r.min()) < 0 or int(r.max()) >= size)
        bad = next(int(t) for t in rows[i] if not 0 <= int(t) < size)
        raise ValueError(
            f"input {i} holds token id {bad}, outside the encoder's vocabulary (ids 0-{size - 1}); "
            "tokenize the inputs with this combiner's own tokenizer"
        )

    # ------------------------------------------------------------------ fallback

    def _record(self, results: list[list[Generated]]) -> list[list[Generated]]:
        self.stats.rows += len(results)
        self.stats.candidates += sum(len(r) for r in results)
        self.stats.generated_tokens += sum(c.num_tokens for r in results for c in r)
        return results

    def _fallback_tokens(self, rows: list[torch.Tensor]) -> list[list[Generated]]:
        pad = self.combiner.preprocessor.input_pad_token_id
        out: list[list[Generated]] = []
        for start in range(0, len(rows), self.slots):
            chunk = rows[start : start + self.slots]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = r
                mask[i, : len(r)] = 1
            out += hf_generate(self.combiner, {"input_ids": ids, "attention_mask": mask}, self.params,
                               self._fallback_model)
        return self._record(out)

    def _fallback_pixels(self, pixel_values: torch.Tensor) -> list[list[Generated]]:
        out: list[list[Generated]] = []
        for start in range(0, pixel_values.shape[0], self.slots):
            out += hf_generate(self.combiner, {"pixel_values": pixel_values[start : start + self.slots]},
                               self.params, self._fallback_model)
        return self._record(out)

    # ------------------------------------------------------------------ the loop

    def _cross(self, batches: Iterable[Encoded]) -> Iterable[CrossBatch]:
        """Encoder batches as the decoder reads them: cross K/V per layer and key bias."""
        runner = self._decoding.runner
        for enc in batches:
            bias = torch.zeros(len(enc.inputs), enc.width, dtype=self.dtype, device=self.device)
            bias.masked_fill_(enc.padding(), runner.min_value)
            self.stats.encoder_batches += 1
            self.stats.encoder_positions += len(enc.inputs) * enc.width
            self.stats.encoder_tokens += sum(enc.lengths)
            yield CrossBatch(inputs=enc.inputs, kv=runner.project_source(enc.states), bias=bias,
                             lengths=enc.lengths, width=enc.width)

    def _prepare(self, slots: int, src: int) -> Decoding:
        """The runner and decoding state for `slots` slots, kept across calls (grown when
        a call needs more slots or source columns)."""
        plan, d = self.plan, self._decoding
        if d is None or d.runner.slots < slots:
            runner = DecoderRunner(
                self.desc, slots=slots, group=plan.group, max_new_tokens=plan.max_new_tokens, src_cap=src,
                device=self.device, dtype=self.dtype, cuda_graphs=self.cuda_graphs,
                static_shapes=self.static_shapes, native=self.native,
            )
            state = DecodeState(slots, plan.group, plan.max_new_tokens, runner.age_in, plan.mode == "beam")
            # greedy search without logits processors picks its tokens natively too
            plain = plan.mode == "greedy" and plan.group == 1 and not plan.processors and len(plan.eos_ids) == 1
            top_mask = None
            if plan.mode == "beam":
                top_mask = torch.zeros(plan.beams_to_keep, dtype=torch.bool, device=self.device)
                top_mask[: plan.group] = True
            d = self._decoding = Decoding(
                plan=plan, state=state, runner=runner,
                eos=torch.tensor(plan.eos_ids, dtype=torch.long, device=self.device),
                # float32(len ** length_penalty), the divisor HF applies as a Python float
                denom=torch.tensor([float(max(i, 1)) ** plan.length_penalty for i in range(plan.max_new_tokens + 2)],
                                   dtype=torch.float32, device=self.device),
                sampler=GumbelSampler(self.desc.vocab_size, self.device) if plan.mode == "sample" else None,
                pick=load_native().greedy_pick if plain and runner._native is not None else None,
                top_mask=top_mask,
            )
        d.runner.grow_source(src)
        return d

    def _run(self, lengths: list[int], row_keys: Sequence[object] | None,
             encode: Callable[[list[int]], Iterable[CrossBatch]]) -> list[list[Generated]]:
        plan = self.plan
        n_inputs = len(lengths)
        if row_keys is None:
            row_keys = list(range(n_inputs))
        elif len(row_keys) != n_inputs:
            raise ValueError(f"{len(row_keys)} row_keys for {n_inputs} inputs")
        seed = plan.seed
        if plan.mode == "sample" and seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        # Longest first: the cross buffers reach their size at once, and a bucket's
        # inputs have similar lengths.
        order = sorted(range(n_inputs), key=lambda i: -lengths[i])
        n_slots = min(self.slots, n_inputs)
        d = self._prepare(n_slots, max(lengths) if self.combiner.modality == "text" else 1)
        slots = Slots(d, order, encode, chunk=n_slots, start_position=self._start_position,
                      row_keys=row_keys, seed=seed)
        first = slots.take(n_slots)
        slots.admit(list(range(len(first))), first, step=0)
        n_active, step = len(first), 0
        step_fn = beam_step if plan.mode == "beam" else token_step
        results: list[list[Generated] | None] = [None] * n_inputs
        active = 0  # decoder positions of unfinished rows
        active_acc = torch.zeros((), dtype=torch.long, device=self.device)  # the same, counted on the device
        while n_active:
            logits = self._forward(d, slots, n_active, step)
            N = n_active * plan.group
            if plan.mode == "sample" and plan.group > 1:  # samples that ended wait for their siblings
                active_acc += (~d.state.row_done[:N]).sum()
            else:  # all rows (beams) of an unfinished input are live
                active += N
            done = step_fn(d, logits, n_active)
            step += 1
            finished = [s for s, f in enumerate(done.tolist()) if f]
            if finished:
                for i, cands in collect(d, finished, slots.input, self.ids["pad_token_id"], self._decode).items():
                    results[i] = cands
                n_active, refilled = slots.refill(finished, n_active, step)
                self.stats.refills += refilled
        self.stats.active_positions += active + int(active_acc)
        assert all(r is not None for r in results)  # noqa: S101 - every input reached a slot and finished
        return self._record(results)  # type: ignore[arg-type]

    def _forward(self, d: Decoding, slots: Slots, n: int, step: int) -> torch.Tensor:
        """One decode step of the first n slots: their logits [n * group, vocab]."""
        runner, st = d.runner, d.state
        N = n * self.plan.group
        # The column each row writes this step (its position) becomes visible to it;
        # columns it has not written yet stay hidden since its admission.
        runner.self_bias[:N].scatter_(1, st.age[:N, None], 0.0)
        if runner.static:
            src_w, self_w = runner.src_cap, self.plan.max_new_tokens
        else:  # only the widths in use: the longest source, the oldest row
            src_w, self_w = max(slots.src[:n]), step - min(slots.start[:n]) + 1
        d.self_w = self_w
        logits = runner.forward(n, src_w, self_w)
        self.stats.decoder_steps += 1
        self.stats.decoder_positions += runner.computed_rows(n)
        return logits

    def _decode(self, token_lists: list[list[int]]) -> list[str]:
        return self.combiner.decoder_tokenizer.batch_decode(token_lists, skip_special_tokens=True)
