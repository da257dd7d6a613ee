"""Teacher forcing of a fixed set of decoder sequences as ONE forward over their trie.

Label scoring (combiner_core.labels) needs log P(v | x) for every input x and every
verbalization v of a label set. Run naively that is K decoder passes per input, each
recomputing the cross-attention keys/values of x and the common prefixes of the
verbalizations. Here instead:

- the verbalizations' decoder inputs (decoder_start, then the tokens but the last)
  form a trie; every trie node (a distinct prefix) is ONE decoder position per input,
  computed once whatever number of verbalizations share it;
- one decoder forward runs over the flattened trie of every input of a batch, with a
  tree attention mask (a node attends to itself and its ancestors) and each node at
  the position of its depth, exactly the position it has in a sequence of its own
  (T5's relative position bias: key depth minus query depth along the node's path);
- cross-attention keys/values are computed once per input and layer, and all trie
  nodes of that input read them (broadcast, no per-verbalization copy);
- the logits of a node score the first token of each of its children (and eos):
  one (node, token) pair per trie edge. A verbalization's log-probability is the sum
  over the edges of its path, as a product with a 0/1 edge-by-sequence matrix.

The decoder is the generation engine's own description (model/description.py's DecoderDescription:
the model's weights, fused q|k|v with the attention scale folded in), so every family
with a generation fast path has a label-scoring fast path too.

The first layer's self-attention block sees only token and position embeddings, which
do not depend on the input: it is computed once per trie, not once per input.

No Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import DecoderDescription
from .model.description import relative_buckets

# Elements of one chunk's logits ([inputs, nodes, vocab]) and of one chunk's
# self-attention scores ([inputs, heads, nodes, nodes]): bounds the memory of a call.
LOGITS_CHUNK_ELEMENTS = 1 << 24
SCORES_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SequenceTrie:
    """The trie of K teacher-forced sequences (token lists, eos last, start not included).

    Attributes:
        tokens: [M] the input token of each node (node 0: decoder_start).
        parent: parent node of each node (-1 for the root).
        depth: [M] depth of each node (root 0): its position in a sequence of its own.
        edge_node, edge_token: [E] one (node, next token) pair per trie edge; the
            node's logits give that token's log-probability.
        paths: per sequence, its edges in order.
    """

    tokens: torch.Tensor
    parent: tuple[int, ...]
    depth: torch.Tensor
    edge_node: torch.Tensor
    edge_token: torch.Tensor
    paths: tuple[tuple[int, ...], ...]

    @property
    def nodes(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def edges(self) -> int:
        return int(self.edge_node.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], start_token_id: int) -> SequenceTrie:
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("every sequence needs at least one token")
        tokens, parent, depth = [int(start_token_id)], [-1], [0]
        child: dict[tuple[int, int], int] = {}  # (node, token) -> child node
        edge_of: dict[tuple[int, int], int] = {}  # (node, token) -> edge
        edge_node: list[int] = []
        edge_token: list[int] = []
        paths = []
        for seq in sequences:
            node, path = 0, []
            for j, tok in enumerate(seq):
                tok = int(tok)
                key = (node, tok)
                if key not in edge_of:
                    edge_of[key] = len(edge_node)
                    edge_node.append(node)
                    edge_token.append(tok)
                path.append(edge_of[key])
                if j + 1 < len(seq):  # the last token (eos) is a target, never an input
                    if key not in child:
                        child[key] = len(tokens)
                        tokens.append(tok)
                        parent.append(node)
                        depth.append(depth[node] + 1)
                    node = child[key]
            paths.append(tuple(path))
        long = dict(dtype=torch.long)
        return cls(
            tokens=torch.tensor(tokens, **long),
            parent=tuple(parent),
            depth=torch.tensor(depth, **long),
            edge_node=torch.tensor(edge_node, **long),
            edge_token=torch.tensor(edge_token, **long),
            paths=tuple(paths),
        )

    def ancestors(self) -> torch.Tensor:
        """[M, M] bool: node i attends to node j (j is i or an ancestor of i)."""
        M = self.nodes
        mask = torch.zeros(M, M, dtype=torch.bool)
        for i in range(M):  # parents precede their children
            p = self.parent[i]
            if p >= 0:
                mask[i] = mask[p]
            mask[i, i] = True
        return mask

    def incidence(self) -> torch.Tensor:
        """[E, K] float64: how many times edge e lies on sequence k's path (0 or 1)."""
        inc = torch.zeros(self.edges, len(self.paths), dtype=torch.float64)
        for k, path in enumerate(self.paths):
            for e in path:
                inc[e, k] += 1.0
        return inc

    def positions(self, desc: DecoderDescription) -> torch.Tensor:
        """[M] positional-table rows, as transformers numbers a sequence fed whole:
        depth + offset; RoBERTa / fairseq style (pos_padding_idx): padding_idx plus
        the count of non-pad tokens up to the node, padding_idx for a pad token."""
        if desc.pos_padding_idx is None:
            return self.depth + desc.pos_offset
        pad = desc.pos_padding_idx
        count = [0] * self.nodes
        out = [0] * self.nodes
        for i in range(self.nodes):
            tok = int(self.tokens[i])
            p = self.parent[i]
            count[i] = (count[p] if p >= 0 else 0) + (tok != pad)
            out[i] = pad if tok == pad else pad + count[i]
        return torch.tensor(out, dtype=torch.long)


class TreeScorer:
    """Log-probabilities of a trie's sequences for batches of encoded inputs.

    Built once per (decoder, trie, device, dtype); `sequence_logprobs` is called per
    batch of encoder states. The description's weights are the model's (views), so build a
    new TreeScorer after loading other weights or changing the model's dtype.
    """

    def __init__(self, desc: DecoderDescription, trie: SequenceTrie, *, device: torch.device, dtype: torch.dtype) -> None:
        self.desc, self.trie = desc, trie
        self.device, self.dtype = device, dtype
        positions = trie.positions(desc)
        if desc.pos_emb is not None and int(positions.max()) >= desc.pos_emb.shape[0]:
            raise ValueError(
                f"a verbalization reaches decoder position {int(positions.max())}; the decoder has "
                f"{desc.pos_emb.shape[0]} positions"
            )
        self.min_value = torch.finfo(dtype).min
        allowed = trie.ancestors().to(device)
        # additive bias [M, M] (the same form as the engine's step: 0 visible, min hidden)
        self.tree_bias = torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill_(~allowed, self.min_value)
        # T5: the relative bias [heads, M, M] for key depth - query depth (a node's ancestors
        # are the tokens before it in its own sequence), plus the tree mask. One shared table
        # is added once here; UMT5's per-layer tables are added per call (_self_mask), so
        # their memory stays one layer's [heads, M, M], not every layer's.
        self.rel_offsets: torch.Tensor | None = None
        self.shared_mask = self.tree_bias
        if desc.rel_bias is not None:
            depth = trie.depth.to(device)
            self.rel_offsets = depth[None, :] - depth[:, None]
            if len(desc.rel_bias) == 1:
                self.shared_mask = desc.relative_bias(self.rel_offsets)[0].to(dtype) + self.tree_bias
        self.edge_node = trie.edge_node.to(device)
        self.edge_token = trie.edge_token.to(device)
        self.incidence = trie.incidence().to(device)
        self.M = trie.nodes
        with torch.inference_mode():
            self.first = self._first_block(trie.tokens.to(device), positions.to(device))

    # -- input-independent part

    def _first_block(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Embeddings and the first layer's self-attention block over the trie: [M, hidden]."""
        desc = self.desc
        x = F.embedding(tokens, desc.word_emb)
        if desc.emb_scale != 1.0:
            x = x * desc.emb_scale
        if desc.type_emb is not None:
            x = x + desc.type_emb
        if desc.pos_emb is not None:
            x = x + F.embedding(positions, desc.pos_emb)
        if desc.emb_norm is not None:
            x = desc.emb_norm(x)
        return self._self_attention(0, x[None], 1)[0]

    def _self_attention(self, i: int, x: torch.Tensor, n: int) -> torch.Tensor:
        desc = self.desc
        layer = desc.layers[i]
        H, d, M = desc.heads, desc.head_dim, self.M
        pre = desc.pre_ln
        h = layer.self_norm(x) if pre else x
        qkv = layer.qkv(h).view(n, M, 3, H, d).permute(2, 0, 3, 1, 4)  # [3, n, H, M, d]
        # the query scale is folded into the q weights by the family files (model/bert.py...): scale=1
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=self._self_mask(i), scale=1.0)
        a = layer.self_out(a.transpose(1, 2).reshape(n, M, desc.inner))
        return x + a if pre else layer.self_norm(x + a)

    def _self_mask(self, i: int) -> torch.Tensor:
        """Layer i's additive self-attention mask: the tree mask, with T5's relative bias."""
        desc = self.desc
        if desc.rel_bias is None or len(desc.rel_bias) == 1:
            return self.shared_mask
        table = desc.rel_bias[i]  # UMT5: this layer's own table
        buckets = relative_buckets(self.rel_offsets, desc.rel_buckets, desc.rel_max_distance)
        return F.embedding(buckets, table).permute(2, 0, 1).to(self.dtype) + self.tree_bias

    # -- per batch

    def project_source(self, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention K, V of every layer, each [b, heads, src, head_dim]: once per input."""
        b, src, _ = states.shape
        H, d = self.desc.heads, self.desc.head_dim
        return [
            (
                layer.cross_k(states).view(b, src, H, d).transpose(1, 2),
                layer.cross_v(states).view(b, src, H, d).transpose(1, 2),
            )
            for layer in self.desc.layers
        ]

    def sequence_logprobs(self, states: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        """log P(sequence | input) [b, K] float64 for encoder states [b, src, cross_dim]
        (after any enc_to_dec_proj) and an additive key bias [b, src] (None: no padding)."""
        b = states.shape[0]
        chunk = max(1, SCORES_CHUNK_ELEMENTS // (self.desc.heads * self.M * self.M))
        out = [
            self._chunk(states[s : s + chunk], None if key_bias is None else key_bias[s : s + chunk])
            for s in range(0, b, chunk)
        ]
        return torch.cat(out) if len(out) > 1 else out[0]

    def _chunk(self, states: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        desc = self.desc
        n = states.shape[0]
        H, d, D, M = desc.heads, desc.head_dim, desc.hidden, self.M
        pre = desc.pre_ln
        cross_bias = None if key_bias is None else key_bias.view(n, 1, 1, -1)
        kv = self.project_source(states)
        x = self.first.expand(n, M, D)
        for i, layer in enumerate(desc.layers):
            if i:
                x = self._self_attention(i, x, n)
            # cross-attention: every node of an input reads that input's K|V
            h = layer.cross_norm(x) if pre else x
            cq = layer.cross_q(h).view(n, M, H, d).transpose(1, 2)  # [n, H, M, d]
            k, v = kv[i]
            a = F.scaled_dot_product_attention(cq, k, v, attn_mask=cross_bias, scale=1.0)
            a = layer.cross_out(a.transpose(1, 2).reshape(n, M, desc.inner))
            x = x + a if pre else layer.cross_norm(x + a)
            # feed-forward
            h = layer.ffn_norm(x) if pre else x
            a = layer.ffn(h)
            x = x + a if pre else layer.ffn_norm(x + a)
        if desc.final_norm is not None:
            x = desc.final_norm(x)
        if desc.head_dense is not None:
            x = desc.head_norm(desc.head_act(desc.head_dense(x)))
        if desc.out_scale != 1.0:
            x = x * desc.out_scale
        step = max(1, LOGITS_CHUNK_ELEMENTS // (M * desc.vocab_size))
        edge_logp = [self._edge_logprobs(x[s : s + step]) for s in range(0, n, step)]
        edge_logp = torch.cat(edge_logp) if len(edge_logp) > 1 else edge_logp[0]
        return edge_logp @ self.incidence  # [n, K]: the sum along each sequence's path

    def _edge_logprobs(self, x: torch.Tensor) -> torch.Tensor:
        """[n, E] float64 log-probability of every trie edge from final hidden states [n, M, hidden]."""
        desc = self.desc
        logits = desc.lm_head(x)  # [n, M, V]
        if desc.logits_bias is not None:
            logits = logits + desc.logits_bias
        # log-softmax only where needed: the normalizer of every node, the logit of every edge
        norm = torch.logsumexp(logits, dim=-1)  # [n, M]
        picked = logits[:, self.edge_node, self.edge_token]  # [n, E]
        return picked.double() - norm[:, self.edge_node].double()
