"""GenerationEngine: in-flight batched generation for combiners (no Ray here).

How a call runs:

1. Inputs are sorted by length and encoded in length buckets (the HF encoder module
   as is, then enc_to_dec_proj when the combiner has one), so the encoder pads only
   within a bucket. Each input's cross-attention K/V are computed once per layer,
   right after its bucket is encoded.
2. A fixed set of decoder slots (each holding one input with all of its beams or
   samples) steps together. When an input finishes, its slot is refilled at once
   with the next encoded input, so the decoder batch stays full; only the tail of
   a call runs part-full, and there the active slots are compacted to a prefix so
   no finished row is computed.
3. The step itself is the generic DecoderRunner over a DecoderSpec (see decoder.py);
   greedy, sampling and beam search are vectorized over slots that sit at different
   lengths, with HF's logits processors re-done per row and HF's beam bookkeeping
   (top-2k continuations, finished-beam merge, early-stop heuristic) per slot.

A decoder family without a fast path, or a setting the engine does not implement,
runs HF `generate` instead (`fast_path` False, `fallback_reason` says why; logged once).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..combiner import Combiner
from ..describe import max_new_tokens_limit
from ..params import GenerationParams
from ..preprocess import collate_token_ids
from .model import (
    DecoderRunner,
    UnsupportedFamily,
    decoder_family,
    extract_decoder,
    is_composite,
    load_native,
)
from .outputs import EngineStats, Generated, trim_generated
from .reference import hf_generate
from .search import (
    GumbelSampler,
    Plan,
    Unsupported,
    apply,
    processors_to,
    resolve_plan,
    row_stream_key,
)

log = logging.getLogger(__name__)

_LOGGED: set[tuple[str, str]] = set()
_LOG_LOCK = threading.Lock()

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
        raise ValueError(f"dtype {name!r}: expected one of auto, {', '.join(_DTYPES)}") from None


@dataclass
class _Bucket:
    """One encoder batch: cross-attention K|V per layer [b, 2, H, L, d] and its key bias [b, L]."""

    inputs: list[int]
    kv: list[torch.Tensor]
    bias: torch.Tensor
    lengths: list[int]
    width: int


class _State:
    """Per-slot decoding state beside the runner's buffers (rows = slots x group)."""

    def __init__(self, slots: int, group: int, T: int, age: torch.Tensor, beam: bool) -> None:
        rows = slots * group
        device = age.device
        long = dict(dtype=torch.long, device=device)
        self.hist = torch.zeros(rows, T + 1, **long)  # token history, [:, 0] = start token
        self.age = age  # the runner's: position of each row's next input token (moved with the runner's buffers)
        self.row_len = torch.zeros(rows, **long)  # tokens generated when the row finished
        self.row_done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.step_logp = torch.zeros(rows, T, dtype=torch.float32, device=device)
        self.stream = torch.zeros(rows, **long)  # sampling stream ids
        self.beam = beam
        if beam:
            f32 = dict(dtype=torch.float32, device=device)
            self.run_scores = torch.zeros(slots, group, **f32)
            self.fin_seq = torch.zeros(slots, group, T + 1, **long)
            self.fin_scores = torch.zeros(slots, group, **f32)
            self.fin_flag = torch.zeros(slots, group, dtype=torch.bool, device=device)
            self.fin_len = torch.zeros(slots, group, **long)
            self.heur = torch.ones(slots, dtype=torch.bool, device=device)
            # Which computation produced each cached K|V column: a stamp unique to (step,
            # row), carried along when a column is copied. Beams whose columns carry the same
            # stamps hold the same bits there, so a reorder copies only the columns whose
            # stamps differ (beams of an input mostly share all but their last few columns).
            self.origin = torch.zeros(rows, T, **long)
            self.row_ids = torch.arange(rows, device=device)
            self.columns = torch.arange(T, device=device)
            self.stamp = 0
        self.slots, self.group = slots, group

    def slot_tensors(self) -> list[torch.Tensor]:
        S, G = self.slots, self.group
        views = [t.view(S, G, *t.shape[1:]) for t in (self.hist, self.row_len, self.row_done, self.step_logp, self.stream)]
        if self.beam:
            views += [self.run_scores, self.fin_seq, self.fin_scores, self.fin_flag, self.fin_len, self.heur]
            views.append(self.origin.view(S, G, -1))
        return views


def length_buckets(order: list[int], lengths: list[int], cap: int) -> list[list[int]]:
    """Split inputs sorted by length (longest first) into encoder batches whose padding
    stays under ~10% of their tokens, of at most `cap` inputs each."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) >= cap or lengths[cur[0]] * (len(cur) + 1) > 1.1 * (total + n)):
            buckets.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        buckets.append(cur)
    return buckets


def _fit_positions(params: GenerationParams, model: torch.nn.Module) -> GenerationParams:
    """`params` with max_new_tokens lowered to what the decoder's position table holds.

    Past it the decoder would read a position it has no embedding for (an IndexError
    that took down whole batches); a row that reaches the limit ends there, as any row
    that reaches max_new_tokens does. Said once per (family, limit) in the log.
    """
    limit = max_new_tokens_limit(model.config.to_dict())
    if limit is None or params.max_new_tokens <= limit:
        return params
    key = (decoder_family(model), f"positions {limit}")
    with _LOG_LOCK:
        first = key not in _LOGGED
        _LOGGED.add(key)
    if first:
        log.warning(
            "generation engine: max_new_tokens=%d is past the %d positions of the '%s' decoder; "
            "rows end at %d tokens", params.max_new_tokens, limit, key[0], limit,
        )
    return params.model_copy(
        update={"max_new_tokens": limit, "min_new_tokens": min(params.min_new_tokens, limit)}
    )


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
            native step (native_step.cpp, built on first use; see native.py). False, or
            no compiler, runs the torch step: the same arithmetic up to float rounding.

    Attributes:
        fast_path: True when the engine runs its own decoder; False when it runs HF
            `generate` (family without a fast path, or an unsupported setting).
        fallback_reason: why fast_path is False, else None.
        native_step: True once a call ran the native CPU decode step (see `native`).
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
    ) -> None:
        self.combiner = combiner
        model = combiner.model
        self.params = _fit_positions(params or GenerationParams(), model)
        self.device = model.device
        self.dtype = model.dtype if dtype is None else resolve_dtype(dtype, self.device)
        if model.dtype != self.dtype:
            log.info("casting the combiner's model from %s to %s for generation", model.dtype, self.dtype)
            model.to(dtype=self.dtype)
        self.cuda_graphs = cuda_graphs
        self.static_shapes = static_shapes
        self.native = native
        self.stats = EngineStats()
        self.family = decoder_family(model)
        self.ids = combiner.special_token_ids()  # raises SpecialTokenError when ids are missing
        self.hf_config = self.params.to_generation_config(model.generation_config)
        self.fallback_reason: str | None = None
        self.plan: Plan | None = None
        try:
            if model.training:
                raise Unsupported("the model is in training mode (dropout would differ)")
            self.spec = extract_decoder(model)
            self.plan = resolve_plan(model, self.hf_config, seed=self.params.seed, vocab=self.spec.vocab_size)
            processors_to(self.plan.processors, self.device)
        except (UnsupportedFamily, Unsupported) as exc:
            self.fallback_reason = str(exc)
            key = (self.family, self.fallback_reason)
            with _LOG_LOCK:
                first = key not in _LOGGED
                _LOGGED.add(key)
            if first:
                log.warning(
                    "generation engine: decoder family '%s' runs HF generate instead of the fast path: %s",
                    self.family,
                    self.fallback_reason,
                )
        group = self.plan.group if self.plan else 1
        self.slots = slots if slots is not None else default_slots(self.device, group)
        if self.slots < 1:
            raise ValueError(f"slots={self.slots}: need at least 1")
        self._runner: DecoderRunner | None = None
        self._state: _State | None = None
        self._pick = None  # native greedy token choice, when _prepare finds it applies
        if self.fast_path:
            self._sampler = GumbelSampler(self.spec.vocab_size, self.device) if self.plan.mode == "sample" else None
            self._eos = torch.tensor(self.plan.eos_ids, dtype=torch.long, device=self.device)
            lp = self.plan.length_penalty
            T = self.plan.max_new_tokens
            # float32(len ** length_penalty), the divisor HF applies as a Python float
            self._denom = torch.tensor([float(max(i, 1)) ** lp for i in range(T + 2)], dtype=torch.float32, device=self.device)
            pad = self.spec.pos_padding_idx
            start = self.plan.start_id
            self._start_position = self.spec.pos_offset if pad is None else (pad if start == pad else pad + 1)
            composite = is_composite(model)
            self._encoder = model.get_encoder()
            self._proj = None
            if composite and (
                model.encoder.config.hidden_size != model.decoder.config.hidden_size
                and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None
            ):
                self._proj = model.enc_to_dec_proj

    @property
    def fast_path(self) -> bool:
        return self.fallback_reason is None

    @property
    def native_step(self) -> bool:
        """True once a call has run the decoder layers through the native CPU step."""
        return self._runner is not None and self._runner._native is not None

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
        if self.combiner.modality != "text":
            raise ValueError(f"this combiner takes images ({self.combiner.layout}); use generate_pixels")
        if not self.fast_path:
            return self._fallback_tokens(rows)
        lengths = [len(r) for r in rows]
        return self._run(lengths, row_keys, lambda idx: self._encode_text(rows, lengths, idx))

    @torch.inference_mode()
    def generate_pixels(
        self, pixel_values: torch.Tensor, row_keys: Sequence[object] | None = None
    ) -> list[list[Generated]]:
        """Generate for a batch of preprocessed images [n, channels, height, width], in input order."""
        if self.combiner.modality != "image":
            raise ValueError(f"this combiner takes text ({self.combiner.layout}); use generate_token_ids")
        n = int(pixel_values.shape[0])
        if n == 0:
            return []
        if not self.fast_path:
            return self._fallback_pixels(pixel_values)
        return self._run([1] * n, row_keys, lambda idx: self._encode_pixels(pixel_values, idx))

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
            out += hf_generate(self.combiner, {"input_ids": ids, "attention_mask": mask}, self.params)
        return self._record(out)

    def _fallback_pixels(self, pixel_values: torch.Tensor) -> list[list[Generated]]:
        out: list[list[Generated]] = []
        for start in range(0, pixel_values.shape[0], self.slots):
            out += hf_generate(self.combiner, {"pixel_values": pixel_values[start : start + self.slots]}, self.params)
        return self._record(out)

    # ------------------------------------------------------------------ encoder side

    def _source_states(self, out: torch.Tensor) -> torch.Tensor:
        return self._proj(out) if self._proj is not None else out

    def _make_bucket(self, idx: list[int], states: torch.Tensor, lengths: list[int]) -> _Bucket:
        runner = self._runner
        width = states.shape[1]
        mask = torch.arange(width, device=self.device)[None, :] < torch.tensor(lengths, device=self.device)[:, None]
        bias = torch.zeros(len(idx), width, dtype=self.dtype, device=self.device)
        bias.masked_fill_(~mask, runner.min_value)
        self.stats.encoder_batches += 1
        self.stats.encoder_positions += len(idx) * width
        self.stats.encoder_tokens += sum(lengths)
        return _Bucket(inputs=idx, kv=runner.project_source(self._source_states(states)), bias=bias, lengths=lengths, width=width)

    def _encode_text(self, rows: list[torch.Tensor], lengths: list[int], idx: list[int]) -> list[_Bucket]:
        pad = self.combiner.preprocessor.input_pad_token_id
        out = []
        for bucket in length_buckets(idx, lengths, cap=max(self.slots, len(idx))):
            batch = collate_token_ids([rows[i] for i in bucket], pad_token_id=pad)
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            states = self._encoder(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
            out.append(self._make_bucket(bucket, states, [lengths[i] for i in bucket]))
        return out

    def _encode_pixels(self, pixel_values: torch.Tensor, idx: list[int]) -> list[_Bucket]:
        first = idx[0]
        if idx == list(range(first, first + len(idx))):  # a run of inputs: a view, no gather copy
            pixels = pixel_values[first : first + len(idx)]
        else:
            pixels = pixel_values[idx]
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        states = self._encoder(pixel_values=pixels, return_dict=True).last_hidden_state
        return [self._make_bucket(idx, states, [states.shape[1]] * len(idx))]

    # ------------------------------------------------------------------ buffers

    def _prepare(self, slots: int, src: int) -> None:
        """(Re)allocate the runner and state for `slots` slots, keeping them across calls."""
        plan = self.plan
        if self._runner is None or self._runner.slots < slots:
            self._runner = DecoderRunner(
                self.spec,
                slots=slots,
                group=plan.group,
                max_new_tokens=plan.max_new_tokens,
                src_cap=src,
                device=self.device,
                dtype=self.dtype,
                cuda_graphs=self.cuda_graphs,
                static_shapes=self.static_shapes,
                native=self.native,
            )
            self._state = _State(slots, plan.group, plan.max_new_tokens, self._runner.age_in, plan.mode == "beam")
            # greedy search without logits processors picks its tokens natively too
            # (native_step.cpp's greedy_pick: one call instead of ~12 ops a step)
            plain = plan.mode == "greedy" and plan.group == 1 and not plan.processors and len(plan.eos_ids) == 1
            self._pick = load_native().greedy_pick if plain and self._runner._native is not None else None
        self._runner.grow_source(src)

    # ------------------------------------------------------------------ the loop

    def _run(self, lengths: list[int], row_keys, encode) -> list[list[Generated]]:
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
        slots = min(self.slots, n_inputs)
        self._prepare(slots, max(lengths) if self.combiner.modality == "text" else 1)
        runner, st = self._runner, self._state
        G, T = plan.group, plan.max_new_tokens
        results: list[list[Generated] | None] = [None] * n_inputs
        pending = deque(order)
        ready: deque[tuple[_Bucket, int]] = deque()
        slot_input = [-1] * runner.slots
        slot_src = [0] * runner.slots
        active_acc = torch.zeros((), dtype=torch.long, device=self.device)
        active = 0
        step = 0  # decode steps of this call; a slot's age is step - slot_start[slot]
        slot_start = [0] * runner.slots

        def take(count: int) -> list[tuple[_Bucket, int]]:
            got = []
            while len(got) < count:
                if not ready:
                    if not pending:
                        break
                    # a slot set's worth at a time: larger encoder batches run little faster
                    # here, and their waiting cross K|V would raise peak memory above HF's
                    chunk = [pending.popleft() for _ in range(min(len(pending), max(slots, count)))]
                    for bucket in encode(chunk):
                        if bucket.width > runner.src_cap:
                            runner.grow_source(bucket.width)
                        ready.extend((bucket, j) for j in range(len(bucket.inputs)))
                got.append(ready.popleft())
            return got

        n_active = 0
        first = take(slots)
        self._admit(list(range(len(first))), first, slot_input, slot_src, row_keys, seed)
        for s in range(len(first)):
            slot_start[s] = 0
        n_active = len(first)
        while n_active:
            n, N = n_active, n_active * G
            # The column each row writes this step (its position) becomes visible to it;
            # columns it has not written yet stay hidden since its admission.
            runner.self_bias[:N].scatter_(1, st.age[:N, None], 0.0)
            if runner.static:
                src_w, self_w = runner.src_cap, T
            else:  # only the widths in use: the longest source, the oldest row
                src_w, self_w = max(slot_src[:n]), step - min(slot_start[:n]) + 1
            self._self_w = self_w
            logits = runner.forward(n, src_w, self_w)
            self.stats.decoder_steps += 1
            self.stats.decoder_positions += runner.computed_rows(n)
            if plan.mode == "beam":
                active += N  # all beams of an unfinished input are live
                done = self._beam_step(logits, n)
            elif G == 1:
                active += N
                done = self._token_step(logits, n)
            else:  # samples of one input that ended early wait for their siblings
                active_acc += (~st.row_done[:N]).sum()
                done = self._token_step(logits, n)
            step += 1
            finished = [s for s, d in enumerate(done.tolist()) if d]
            if not finished:
                continue
            self._collect(finished, slot_input, results)
            # refill freed slots at once; compact what cannot be refilled
            fill = take(len(finished))
            if fill:
                self.stats.refills += len(fill)
                self._admit(finished[: len(fill)], fill, slot_input, slot_src, row_keys, seed)
                for s in finished[: len(fill)]:
                    slot_start[s] = step
            holes = finished[len(fill) :]
            if holes:
                n_active = self._compact(holes, n_active, slot_input, slot_src, slot_start)
        self.stats.active_positions += active + int(active_acc)
        assert all(r is not None for r in results)
        return self._record(results)  # type: ignore[arg-type]

    def _admit(self, slots: list[int], items: list[tuple[_Bucket, int]], slot_input, slot_src, row_keys, seed) -> None:
        """Put encoded inputs into slots: their cross K/V and bias, a fresh decoding state."""
        runner, st, plan = self._runner, self._state, self.plan
        G = plan.group
        by_bucket: dict[int, tuple[_Bucket, list[int], list[int]]] = {}
        for s, (bucket, j) in zip(slots, items, strict=True):
            entry = by_bucket.setdefault(id(bucket), (bucket, [], []))
            entry[1].append(s)
            entry[2].append(j)
            slot_input[s] = bucket.inputs[j]
            slot_src[s] = bucket.lengths[j]
        for bucket, ss, js in by_bucket.values():
            s_t = torch.tensor(ss, device=self.device)
            j_t = torch.tensor(js, device=self.device)
            W = bucket.width
            for layer, kv in enumerate(bucket.kv):
                # index_select / index_copy_ move whole rows (advanced-index assignment
                # computes an offset per element and is several times slower)
                runner.cross_kv[layer][:, :W].index_copy_(0, s_t, kv.index_select(0, j_t))
            runner.cross_bias[s_t] = runner.min_value
            runner.cross_bias[s_t, :W] = bucket.bias[j_t]
        s_t = torch.tensor(slots, device=self.device)
        rows = (s_t[:, None] * G + torch.arange(G, device=self.device)[None, :]).reshape(-1)
        st.age[rows] = 0
        st.hist[rows, 0] = plan.start_id
        st.row_done[rows] = False
        st.row_len[rows] = 0
        runner.tok_in[rows] = plan.start_id
        runner.pos_in[rows] = self._start_position
        runner.self_bias[rows] = runner.min_value
        if plan.mode == "sample":
            streams = [row_stream_key(seed, row_keys[slot_input[s]], g) for s in slots for g in range(G)]
            st.stream[rows] = torch.tensor(streams, dtype=torch.long, device=self.device)
        if plan.mode == "beam":
            st.run_scores[s_t] = -1e9
            st.run_scores[s_t, 0] = 0.0
            st.fin_scores[s_t] = -1e9
            st.fin_flag[s_t] = False
            st.fin_len[s_t] = 0
            st.heur[s_t] = True

    def _compact(self, holes: list[int], n_active: int, slot_input, slot_src, slot_start) -> int:
        """Move the last active slots into the holes so active slots stay a prefix."""
        hole_set = set(holes)
        new_n = n_active - len(holes)
        movers = [s for s in range(new_n, n_active) if s not in hole_set]
        targets = [h for h in sorted(holes) if h < new_n]
        assert len(movers) == len(targets)
        if movers:
            dst = torch.tensor(targets, device=self.device)
            src = torch.tensor(movers, device=self.device)
            for t in (*self._runner.slot_tensors(), *self._state.slot_tensors()):
                t.index_copy_(0, dst, t.index_select(0, src))
            for d, s in zip(targets, movers, strict=True):
                slot_input[d], slot_src[d], slot_start[d] = slot_input[s], slot_src[s], slot_start[s]
        for s in range(new_n, n_active):
            slot_input[s] = -1
        return new_n

    def _advance(self, N: int) -> None:
        """After a step: rows move one position on (tok_in already holds their new tokens)."""
        st, runner = self._state, self._runner
        st.age[:N] += 1
        pad = self.spec.pos_padding_idx
        if pad is None:
            runner.pos_in[:N] += 1
        else:  # RoBERTa / fairseq positions: a pad token sits at padding_idx
            runner.pos_in[:N] = torch.where(runner.tok_in[:N] != pad, st.age[:N] + (pad + 1), pad)

    # ------------------------------------------------------------------ greedy / sampling

    def _token_step(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        plan, st, runner = self.plan, self._state, self._runner
        if self._pick is not None:
            pad = self.spec.pos_padding_idx
            return self._pick(
                logits, st.step_logp, st.hist, st.age, runner.tok_in, runner.pos_in, plan.eos_ids[0],
                plan.max_length - 1, -1 if pad is None else pad,
            )
        G = plan.group
        N = n * G
        age = st.age[:N]
        cur_len = age + 1
        scores = logits.float() if logits.dtype != torch.float32 else logits
        if plan.processors:
            scores = apply(plan.processors, st.hist[:N], cur_len, scores)
        logp = torch.log_softmax(scores, dim=-1)
        if plan.mode == "sample":
            tok = torch.argmax(logp + self._sampler.gumbel(st.stream[:N], age), dim=-1)
        else:
            tok = torch.argmax(scores, dim=-1)
        logp_tok = logp.gather(1, tok[:, None])
        st.step_logp[:N].scatter_(1, age[:, None], logp_tok)
        st.hist[:N].scatter_(1, cur_len[:, None], tok[:, None])
        eos = self.plan.eos_ids
        if len(eos) == 1:
            ends = (tok == eos[0]) | (cur_len >= plan.max_length - 1)
        else:
            ends = torch.isin(tok, self._eos) | (cur_len >= plan.max_length - 1)
        runner.tok_in[:N] = tok
        self._advance(N)
        if G == 1:  # the slot ends with its row; its length is its age (read in _collect)
            return ends
        newly = ends & ~st.row_done[:N]
        st.row_len[:N] = torch.where(newly, cur_len, st.row_len[:N])
        st.row_done[:N] |= ends
        return st.row_done[:N].view(n, G).all(dim=1)

    # ------------------------------------------------------------------ beam search

    def _beam_step(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        """One step of HF's beam search (_beam_search) for n slots at their own lengths."""
        plan, st, runner = self.plan, self._state, self._runner
        G, K = plan.group, plan.beams_to_keep
        N = n * G
        V = logits.shape[-1]
        T1 = st.hist.shape[1]
        cur_len_rows = st.age[:N] + 1
        cur_len = cur_len_rows.view(n, G)[:, 0]  # tokens in each slot's running sequences
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if plan.processors:
            log_probs = apply(plan.processors, st.hist[:N], cur_len_rows, log_probs)
        log_probs = log_probs.view(n, G, V) + st.run_scores[:n, :, None]
        topk_log_probs, topk_indices = torch.topk(log_probs.view(n, G * V), k=K)
        parent = topk_indices // V
        tok = topk_indices % V
        hist = st.hist.view(-1, G, T1)[:n]
        topk_seqs = torch.gather(hist, 1, parent[:, :, None].expand(n, K, T1))
        topk_seqs.scatter_(2, cur_len.view(n, 1, 1).expand(n, K, 1), tok[:, :, None])
        hits = torch.isin(tok, self._eos) | (cur_len + 1 >= plan.max_length)[:, None]
        # running beams for the next step: the best non-finished continuations
        running_lp = topk_log_probs + hits.to(torch.float32) * -1.0e9
        nxt = torch.topk(running_lp, k=G)[1]
        new_seqs = torch.gather(topk_seqs, 1, nxt[:, :, None].expand(n, G, T1))
        new_scores = torch.gather(running_lp, 1, nxt)
        new_parent = torch.gather(parent, 1, nxt)
        # finished beams: merge new top-num_beams finished candidates, keep the best num_beams
        did_finish = hits & self._top_mask(K, G)[None, :]
        denom = self._denom[cur_len][:, None]
        cand = topk_log_probs / denom
        if plan.early_stopping is True:
            full = st.fin_flag[:n].all(dim=-1, keepdim=True)
            cand += full.to(torch.float32) * -1.0e9
        cand += (~st.heur[:n, None]).to(torch.float32) * -1.0e9
        cand += (~did_finish) * -1.0e9
        merged_seqs = torch.cat((st.fin_seq[:n], topk_seqs), dim=1)
        merged_scores = torch.cat((st.fin_scores[:n], cand), dim=1)
        merged_flag = torch.cat((st.fin_flag[:n], did_finish), dim=1)
        merged_len = torch.cat((st.fin_len[:n], cur_len[:, None].expand(n, K)), dim=1)
        keep = torch.topk(merged_scores, k=G)[1]
        st.fin_seq[:n] = torch.gather(merged_seqs, 1, keep[:, :, None].expand(n, G, T1))
        st.fin_scores[:n] = torch.gather(merged_scores, 1, keep)
        st.fin_flag[:n] = torch.gather(merged_flag, 1, keep)
        st.fin_len[:n] = torch.gather(merged_len, 1, keep)
        # beams continue from their parents: reorder the self-attention cache rows
        src = (st.row_ids[:N:G, None] + new_parent).reshape(-1)  # slot's first row + parent beam
        st.stamp += 1  # the columns written this step get fresh stamps: step x rows + row
        st.origin[:N].scatter_(1, st.age[:N, None], torch.add(st.row_ids[:N, None], st.stamp * st.origin.shape[0]))
        self._reorder(src, N)
        hist.copy_(new_seqs)
        st.run_scores[:n] = new_scores
        runner.tok_in[:N] = torch.gather(new_seqs, 2, cur_len.view(n, 1, 1).expand(n, G, 1)).reshape(-1)
        self._advance(N)
        # HF's early-stop heuristic, evaluated after the step (cur_len + 1 tokens)
        if plan.early_stopping == "never" and plan.length_penalty > 0.0:
            best_denom = self._denom[plan.max_length - 1]
        else:
            best_denom = self._denom[cur_len][:, None]
        best_possible = new_scores[:, :1] / best_denom
        worst = torch.where(st.fin_flag[:n], torch.min(st.fin_scores[:n], dim=1, keepdim=True)[0], -1.0e9)
        st.heur[:n] &= torch.any(best_possible > worst, dim=-1)
        done = ~st.heur[:n] | hits.all(dim=-1)
        if plan.early_stopping is True:
            done |= st.fin_flag[:n].all(dim=-1)
        return done

    def _top_mask(self, K: int, G: int) -> torch.Tensor:
        mask = getattr(self, "_top_mask_t", None)
        if mask is None:
            mask = torch.zeros(K, dtype=torch.bool, device=self.device)
            mask[:G] = True
            self._top_mask_t = mask
        return mask

    def _reorder(self, src: torch.Tensor, N: int) -> None:
        """Rows i of the self-attention caches become rows src[i].

        Only columns whose origin stamp differs from the new parent's move, up to the
        row's current age: the same stamp means copies of one computation, the same bits.
        A beam and its new parent differ only past their common ancestry (mostly the last
        few columns), and a row that keeps its own beam moves nothing. Copying each
        changed row's whole written prefix instead was 20% of a base-size beam search.
        """
        st = self._state
        width = self._self_w  # every row's written columns lie in the first self_w
        parent = st.origin[src]
        moves = (st.origin[:N, :width] != parent[:, :width]) & (st.columns[:width] <= st.age[:N, None])
        rows, cols = moves.nonzero().unbind(1)
        st.origin[:N] = parent
        if rows.numel() == 0:
            return
        # one flat index per moved column: a column is one block of 2*D in the flat cache
        row_base = self._runner.row_base
        to_at, from_at = row_base[rows] + cols, row_base[src[rows]] + cols
        for cache in self._runner.kv_cache:
            flat = cache.view(-1, 2 * self.spec.hidden)
            flat.index_put_((to_at,), flat.index_select(0, from_at))

    # ------------------------------------------------------------------ results

    def _collect(self, finished: list[int], slot_input: list[int], results: list) -> None:
        """Turn finished slots into Generated candidates, trimmed and scored as hf_generate does."""
        plan, st = self.plan, self._state
        G = plan.group
        pad = self.ids["pad_token_id"]  # trimmed as hf_generate trims
        eos = set(plan.eos_ids)
        s_t = torch.tensor(finished, device=self.device)
        cands: list[tuple[int, list[int]]] = []  # (slot index in `finished`, tokens)
        if plan.mode == "beam":
            R = plan.num_return
            seqs = st.fin_seq[s_t, :R].cpu().tolist()
            lens = st.fin_len[s_t, :R].cpu().tolist()
            flat_scores = st.fin_scores[s_t, :R].reshape(-1).cpu().tolist()
            for k in range(len(finished)):
                for r in range(R):
                    cands.append((k, trim_generated(seqs[k][r][1 : 1 + lens[k][r]], pad=pad, eos=eos)))
        else:
            R = G
            rows = (s_t[:, None] * G + torch.arange(G, device=self.device)[None, :]).reshape(-1)
            hist = st.hist[rows, 1:].cpu().tolist()
            lens = (st.row_len if G > 1 else st.age)[rows].cpu().tolist()
            for r in range(len(rows)):
                cands.append((r // G, trim_generated(hist[r][: lens[r]], pad=pad, eos=eos)))
            # mean log-prob of the kept tokens, non-finite steps left out (as hf_generate)
            kept = torch.tensor([len(t) for _, t in cands], device=self.device)
            logp = st.step_logp[rows]
            use = (torch.arange(logp.shape[1], device=self.device)[None, :] < kept[:, None]) & torch.isfinite(logp)
            count = use.sum(dim=1)
            mean = torch.where(use, logp, 0.0).sum(dim=1) / count.clamp(min=1)
            flat_scores = torch.where(count > 0, mean, 0.0).cpu().tolist()
        texts = self.combiner.decoder_tokenizer.batch_decode([t for _, t in cands], skip_special_tokens=True)
        for k, s in enumerate(finished):
            results[slot_input[s]] = [
                Generated(text=texts[i].strip(), token_ids=tuple(cands[i][1]), score=float(flat_scores[i]), num_tokens=len(cands[i][1]))
                for i in range(k * R, (k + 1) * R)
            ]
