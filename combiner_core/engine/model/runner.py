"""DecoderRunner: static buffers for a set of decoder slots and ONE generic decode step
over a DecoderDescription (torch ops, or the native CPU step: native.py).

Why a description instead of calling the HF decoder: HF's decoder forward costs tens
of Python-level module calls, cache objects, mask builders and a torch.cat per layer
per step; for small models that overhead dominates. Every supported family is the
same transformer decoder with a few switches, so one step covers them all. On CPU in
float32 the step's layer loop runs as one native call (native_step.cpp, see
native.py): the same arithmetic without the per-op cost that dominates small models.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from .description import DecoderDescription, rms_norm
from .graphs import StepGraphs
from .native import act_code, load_native, native_error
from .packed import STEP_LINEARS, is_packed
from .quantize import int8_linear, is_quantized

log = logging.getLogger(__name__)


class DecoderRunner:
    """Static buffers for a fixed set of slots and ONE decode step over a DecoderDescription.

    Rows are slot-major: row = slot * group + g, where group is the number of
    hypotheses per input (beams, or samples per input). Buffers:

    - self-attention K|V per layer, [rows, T, 2, heads, head_dim], T = max_new_tokens,
      written in place at each row's own position: a row's new K|V is one contiguous
      block, so the write is one index_copy_ of [rows, 2*hidden] (a scatter into a
      head-major layout cost 2.5x as much; no torch.cat). A row's keys are the prefix
      [0, position], so a step attends over the first `self_w` columns only, the
      oldest live row's length, and a per-row bias hides the columns a younger row has
      not written. SDPA reads the (sequence, head) layout through strides, without a
      copy, and ran 15% faster on it than on head-major slices (CPU, batch 32);
    - cross-attention K|V per layer, [slots, src_cap, 2, heads, head_dim], computed once
      per input and shared by its beams: queries [slots, heads, group, d] broadcast
      against them (no repeat_interleave, no per-beam copy);
    - step inputs (token, position, column, biases) that a CUDA graph reads.

    `forward(n, src_w, self_w)` runs the first n slots over the first src_w source and
    self_w target positions. With static shapes (CUDA) it computes a bucket of slots
    (the next power of two) over src_cap source and all T columns, replaying a graph
    captured per (bucket, src_cap); on CPU it runs eagerly on exactly n slots and the
    used widths (shapes vary, which costs nothing there), unless static_shapes=True
    asks for the graph path's shapes (what the tests check on CPU). There, in float32,
    the layers run through native_step.cpp when it builds (`native`; `native_reason`
    says why not), with the rows split into one group per thread (`chunks`).
    """

    def __init__(
        self,
        desc: DecoderDescription,
        *,
        slots: int,
        group: int,
        max_new_tokens: int,
        src_cap: int,
        device: torch.device,
        dtype: torch.dtype,
        cuda_graphs: bool = True,
        static_shapes: bool | None = None,
        native: bool = True,
    ) -> None:
        self.desc = desc
        self.slots, self.group = slots, group
        self.rows = slots * group
        self.T = max_new_tokens
        self.device, self.dtype = device, dtype
        self.min_value = torch.finfo(dtype).min
        H, d, L = desc.heads, desc.head_dim, len(desc.layers)
        z = dict(device=device, dtype=dtype)
        self.kv_cache = [torch.zeros(self.rows, self.T, 2, H, d, **z) for _ in range(L)]
        self.use_graphs = cuda_graphs and device.type == "cuda"
        # Static shapes are what a CUDA graph captures; on CPU they run eagerly (tests
        # check the graph path's arithmetic there), else CPU runs the exact shapes.
        self.static = bool(static_shapes) or self.use_graphs
        self._graphs = StepGraphs(device, self._forward) if self.use_graphs else None
        self.src_cap = 0
        self.cross_kv: list[torch.Tensor] = []
        self.cross_bias = torch.zeros(0, device=device, dtype=dtype)
        self.grow_source(src_cap)
        self.tok_in = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.pos_in = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.age_in = torch.zeros(self.rows, dtype=torch.long, device=device)  # column each row writes
        self.row_base = torch.arange(self.rows, device=device) * self.T  # row's first slot in a flat cache
        self.self_bias = torch.full((self.rows, self.T), self.min_value, **z)
        # T5's relative position bias, [tables, heads, 2T - 1]: entry T - 1 + (j - age) is
        # the bias of key column j for a row at column age. A row's query sits at its own
        # column, so the bias depends on the offset only and is computed once here, not per
        # step (entries past the row's column are hidden by self_bias anyway).
        self.rel = None
        if desc.rel_bias is not None:
            offsets = torch.arange(-(self.T - 1), self.T, device=device)
            self.rel = desc.relative_bias(offsets).to(dtype).contiguous()
            self._rel_offsets = torch.arange(self.T, device=device)
        self._rel_native = self.rel if self.rel is not None else torch.zeros(0, **z)  # empty: no relative bias
        # int8 (quantize.py): the step's linears take the packed weights, through int8_linear
        self.quantized = is_quantized(desc)
        wt = (lambda lin: lin.packed) if self.quantized else (lambda lin: lin.weight)
        self._flat = [
            (
                wt(lay.qkv), lay.qkv.bias, wt(lay.self_out), lay.self_out.bias,
                lay.self_norm.weight, lay.self_norm.bias, lay.self_norm.eps,
                wt(lay.cross_q), lay.cross_q.bias, wt(lay.cross_out), lay.cross_out.bias,
                lay.cross_norm.weight, lay.cross_norm.bias, lay.cross_norm.eps,
                wt(lay.fc1), lay.fc1.bias, lay.act, wt(lay.fc2), lay.fc2.bias,
                lay.ffn_norm.weight, lay.ffn_norm.bias, lay.ffn_norm.eps,
            )
            for lay in desc.layers
        ]
        self.native_reason: str | None = None  # why the native layer step is off, if it is
        self._native = self._native_layers() if native else None
        # Cross-attention K|V of a layer as ONE matmul on [W_k; W_v], whose [b, src, 2*inner]
        # output is the buffers' [b, src, 2, heads, d] layout as it is: no torch.stack copy,
        # and one wider GEMM instead of two. int8 keeps its two packed linears.
        self._cross_kv_w: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None
        if not self.quantized:
            self._cross_kv_w = [_stacked(lay.cross_k, lay.cross_v) for lay in desc.layers]
        if not native:
            self.native_reason = "native=False"

    def _native_layers(self) -> Any | None:
        """native_step.cpp's Layers over this description's weights, when this runner can use it:
        CPU, float32, exact shapes (static shapes mirror what a CUDA graph runs), and an
        activation it knows."""
        desc = self.desc
        if self.device.type != "cpu" or self.dtype != torch.float32 or self.static:
            self.native_reason = "CPU float32 exact-shape steps only"
            return None
        acts = {act_code(lay.act) for lay in desc.layers}
        if len(acts) != 1 or None in acts:
            self.native_reason = f"activation {type(desc.layers[0].act).__name__} has no native form"
            return None
        if len({lay.gated for lay in desc.layers}) != 1:
            self.native_reason = "layers mixing gated and plain feed-forwards"
            return None
        module = load_native()
        if module is None:
            self.native_reason = native_error()
            return None
        weights, eps = [], []
        for lay in desc.layers:
            for part in (lay.self_norm, lay.qkv, lay.self_out, lay.cross_norm, lay.cross_q, lay.cross_out, lay.ffn_norm, lay.fc1, lay.fc2):
                bias = part.bias if part.bias is not None else torch.zeros(part.weight.shape[0], dtype=self.dtype)
                weights += [part.weight, bias.contiguous()]
            eps += [lay.self_norm.eps, lay.cross_norm.eps, lay.ffn_norm.eps]
        layers = module.Layers(weights, eps, desc.heads, acts.pop(), desc.pre_ln, desc.rms_norm, desc.layers[0].gated)
        if is_packed(desc):  # float32 on oneDNN-reordered weights (packed.py)
            layers.set_packed([getattr(lay, n).packed for lay in desc.layers for n in STEP_LINEARS])
        elif self.quantized:  # int8: the same packed weights as the torch step (native_step.cpp's int8_mm)
            layers.set_int8([
                lin.packed for lay in desc.layers
                for lin in (lay.qkv, lay.self_out, lay.cross_q, lay.cross_out, lay.fc1, lay.fc2)
            ])
        return layers

    # -- buffers

    def grow_source(self, needed: int) -> None:
        """Make the cross-attention buffers hold `needed` source positions (keeps contents)."""
        if needed <= self.src_cap:
            return
        quantum = 64 if self.device.type == "cuda" else 8
        cap = max(quantum, -(-needed // quantum) * quantum)
        H, d = self.desc.heads, self.desc.head_dim
        z = dict(device=self.device, dtype=self.dtype)
        old = self.src_cap
        grown = []
        for i in range(len(self.desc.layers)):
            new = torch.zeros(self.slots, cap, 2, H, d, **z)
            if old:
                new[:, :old] = self.cross_kv[i]
            grown.append(new)
        self.cross_kv = grown
        bias = torch.full((self.slots, cap), self.min_value, **z)
        if old:
            bias[:, :old] = self.cross_bias
        self.cross_bias = bias
        self.src_cap = cap
        if self._graphs is not None:
            self._graphs.clear()  # captured graphs point at the old buffers

    def advance(self, n_rows: int) -> None:
        """After a step: the first n_rows rows move one position on (tok_in already holds
        their new tokens). RoBERTa / fairseq positions: a pad token sits at padding_idx."""
        N = n_rows
        self.age_in[:N] += 1
        pad = self.desc.pos_padding_idx
        if pad is None:
            self.pos_in[:N] += 1
        else:
            self.pos_in[:N] = torch.where(self.tok_in[:N] != pad, self.age_in[:N] + (pad + 1), pad)

    def project_source(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention K|V of every layer for encoder states [b, src, cross_dim] -> [b, src, 2, H, d]."""
        b, src, _ = states.shape
        H, d = self.desc.heads, self.desc.head_dim
        if self._cross_kv_w is not None:
            return [F.linear(states, w, bias).view(b, src, 2, H, d) for w, bias in self._cross_kv_w]
        out = []
        for layer in self.desc.layers:
            k = layer.cross_k(states).view(b, src, H, d)
            v = layer.cross_v(states).view(b, src, H, d)
            out.append(torch.stack((k, v), dim=2))
        return out

    def slot_tensors(self) -> list[torch.Tensor]:
        """Every buffer indexed by slot (views shaped [slots, ...]), for moving slots."""
        views = [t.view(self.slots, self.group, *t.shape[1:]) for t in self.kv_cache]
        views += [*self.cross_kv, self.cross_bias]
        views += [
            t.view(self.slots, self.group, *t.shape[1:]) for t in (self.tok_in, self.pos_in, self.age_in, self.self_bias)
        ]
        return views

    # -- the step

    def _forward(self, n: int, src_w: int, self_w: int) -> torch.Tensor:
        """Logits [n*group, vocab] for the staged inputs of the first n slots.

        Written flat (weights unpacked into locals, torch functions called directly)
        because for small models Python overhead per op is what a step costs.
        """
        desc = self.desc
        G, H, d = self.group, desc.heads, desc.head_dim
        N = n * G
        D, inner = desc.hidden, desc.inner
        shape = (D,)
        linear, sdpa = (int8_linear if self.quantized else F.linear), F.scaled_dot_product_attention
        layer_norm = rms_norm if desc.rms_norm else F.layer_norm
        x = F.embedding(self.tok_in[:N], desc.word_emb)
        if self._native is not None:
            return self._native_forward(x, n, src_w, self_w)
        x = self._embed(x, N)
        self_bias = self.self_bias[:N, :self_w].view(N, 1, 1, self_w)
        cross_bias = self.cross_bias[:n, :src_w].view(n, 1, 1, src_w)
        # each row writes its new K|V (one block of 2*D) at its own position
        age = self.age_in[:N]
        if self.static:  # rows past n in a bucket may be finished ones, at age T
            age = age.clamp(max=self.T - 1)
        write_at = self.row_base[:N] + age
        # T5: the relative bias of each table for every row's columns [0, self_w), plus the mask
        self_biases = [self_bias]
        if self.rel is not None:
            cols = (self.T - 1) - age[:, None] + self._rel_offsets[None, :self_w]  # [N, self_w]
            self_biases = (self.rel[:, :, cols].transpose(1, 2) + self_bias.view(1, N, 1, self_w)).unsqueeze(3).unbind(0)
        gated = desc.layers[0].gated
        pre = desc.pre_ln
        for i, (cache, cross, p) in enumerate(zip(self.kv_cache, self.cross_kv, self._flat, strict=True)):
            (qkv_w, qkv_b, so_w, so_b, n1_w, n1_b, e1, cq_w, cq_b, co_w, co_b, n2_w, n2_b, e2,
             f1_w, f1_b, act, f2_w, f2_b, n3_w, n3_b, e3) = p
            # self-attention over the row's cached prefix (the scale is folded into the q weights)
            h = layer_norm(x, shape, n1_w, n1_b, e1) if pre else x
            qkv = linear(h, qkv_w, qkv_b)
            cache.view(-1, 2 * inner).index_copy_(0, write_at, qkv[:, inner:])
            keys = cache[:N, :self_w]  # [N, w, 2, H, d]
            q = qkv[:, :inner].view(N, H, 1, d)
            mask = self_biases[i if len(self_biases) > 1 else 0]
            a = sdpa(q, keys[:, :, 0].transpose(1, 2), keys[:, :, 1].transpose(1, 2), attn_mask=mask, scale=1.0)
            a = linear(a.view(N, inner), so_w, so_b)
            x = x + a if pre else layer_norm(x + a, shape, n1_w, n1_b, e1)
            # cross-attention: the group's queries share their slot's K|V
            h = layer_norm(x, shape, n2_w, n2_b, e2) if pre else x
            cq = linear(h, cq_w, cq_b).view(n, G, H, d).transpose(1, 2)  # [n, H, G, d]
            kv = cross[:n, :src_w]  # [n, src, 2, H, d]
            a = sdpa(cq, kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2), attn_mask=cross_bias, scale=1.0)
            a = linear(a.transpose(1, 2).reshape(N, inner), co_w, co_b)
            x = x + a if pre else layer_norm(x + a, shape, n2_w, n2_b, e2)
            # feed-forward
            h = layer_norm(x, shape, n3_w, n3_b, e3) if pre else x
            a = linear(h, f1_w, f1_b)
            if gated:  # T5 v1.1: act(wi_0 h) * wi_1 h, the two halves of one matmul
                half = a.shape[1] // 2
                a = act(a[:, :half]) * a[:, half:]
            else:
                a = act(a)
            a = linear(a, f2_w, f2_b)
            x = x + a if pre else layer_norm(x + a, shape, n3_w, n3_b, e3)
        return self._head(x)

    def _embed(self, x: torch.Tensor, N: int) -> torch.Tensor:
        """Input embeddings [N, hidden] from the word embeddings x of the staged tokens."""
        desc = self.desc
        if desc.emb_scale != 1.0:
            x = x * desc.emb_scale
        if desc.type_emb is not None:
            x = x + desc.type_emb
        if desc.pos_emb is not None:
            x = x + F.embedding(self.pos_in[:N], desc.pos_emb)
        if desc.emb_norm is not None:
            x = desc.emb_norm(x)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        desc = self.desc
        if desc.final_norm is not None:
            x = desc.final_norm(x)
        if desc.head_dense is not None:
            x = desc.head_norm(desc.head_act(desc.head_dense(x)))
        if desc.out_scale != 1.0:
            x = x * desc.out_scale
        logits = desc.lm_head(x)
        if desc.logits_bias is not None:
            logits = logits + desc.logits_bias
        return logits

    def chunks(self) -> int:
        """Row groups the native step runs in parallel: one, whose matmuls ATen threads
        and whose per-row loops (attention, norms) the threads share (native_step.cpp).
        One group per thread had each thread stream every weight of the step on its
        share of the rows; with the step's weights prepacked for oneDNN (packed.py) and
        the per-row loops parallel, one group is as fast or faster (2 cores, 128 inputs,
        greedy, outputs identical: t5-small 10.7-11.1 s against 11.1-11.2, bart-base
        23.3-24.2 against 24.3-25.6; a 32-row t5-small step 21.3 against 21.6 ms and at
        2-8 rows, the tail of a call, 4.5-8.1 against 6.9-9.9 ms; the small captioner
        and beam search within noise)."""
        return 1

    def _native_forward(self, x: torch.Tensor, n: int, src_w: int, self_w: int) -> torch.Tensor:
        N = n * self.group
        x = self._embed(x, N).contiguous()  # a fresh tensor (the position add), updated in place
        self._native.run(
            x, self.kv_cache, self.cross_kv, self.age_in, self.self_bias, self.cross_bias, self._rel_native, self_w, src_w,
            self.group, self.chunks()
        )
        return self._head(x)

    def bucket(self, n: int) -> int:
        """Slots a CUDA graph computes for n active ones: the next power of two (capped at
        `slots`), so a handful of graphs serve every n and at most half the rows idle."""
        return min(self.slots, 1 << max(0, math.ceil(math.log2(max(n, 1)))))

    def computed_rows(self, n: int) -> int:
        return (self.bucket(n) if self.static else n) * self.group

    def forward(self, n: int, src_w: int, self_w: int) -> torch.Tensor:
        """Run the step for the first n slots; returns logits [n*group, vocab] (a view)."""
        if not self.static:
            return self._forward(n, src_w, self_w)
        bucket = self.bucket(n)
        if self._graphs is None:
            return self._forward(bucket, self.src_cap, self.T)[: n * self.group]
        return self._graphs.replay(bucket, self.src_cap, self.T)[: n * self.group]


def _stacked(k: Any, v: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[W_k; W_v] and [b_k; b_v] (None when neither has a bias; zeros for a missing one)."""
    weight = torch.cat([k.weight, v.weight]).contiguous()
    if k.bias is None and v.bias is None:
        return weight, None
    def bias(lin: Any) -> torch.Tensor:
        return lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0], dtype=weight.dtype,
                                                                 device=weight.device)

    return weight, torch.cat([bias(k), bias(v)])
