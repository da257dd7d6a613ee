"""One step of HF's beam search (its _beam_search) for slots at their own lengths, and
the reorder of the self-attention cache that follows it."""

from __future__ import annotations

import torch

from .processors import apply
from .state import Decoding


def beam_step(d: Decoding, logits: torch.Tensor, n: int) -> torch.Tensor:
    """Top-2k continuations, the running beams of the next step, the finished-beam merge
    and HF's early-stop heuristic, per slot; returns which of the n slots are done."""
    plan, st, runner = d.plan, d.state, d.runner
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
    hits = torch.isin(tok, d.eos) | (cur_len + 1 >= plan.max_length)[:, None]
    # running beams for the next step: the best non-finished continuations
    running_lp = topk_log_probs + hits.to(torch.float32) * -1.0e9
    nxt = torch.topk(running_lp, k=G)[1]
    new_seqs = torch.gather(topk_seqs, 1, nxt[:, :, None].expand(n, G, T1))
    new_scores = torch.gather(running_lp, 1, nxt)
    new_parent = torch.gather(parent, 1, nxt)
    _merge_finished(d, n, topk_seqs, topk_log_probs, hits, cur_len)
    # beams continue from their parents: reorder the self-attention cache rows
    src = (st.row_ids[:N:G, None] + new_parent).reshape(-1)  # slot's first row + parent beam
    st.stamp += 1  # the columns written this step get fresh stamps: step x rows + row
    st.origin[:N].scatter_(1, st.age[:N, None], torch.add(st.row_ids[:N, None], st.stamp * st.origin.shape[0]))
    reorder(d, src, N)
    hist.copy_(new_seqs)
    st.run_scores[:n] = new_scores
    runner.tok_in[:N] = torch.gather(new_seqs, 2, cur_len.view(n, 1, 1).expand(n, G, 1)).reshape(-1)
    runner.advance(N)
    return _done(d, n, new_scores, hits, cur_len)


def _merge_finished(d: Decoding, n: int, topk_seqs: torch.Tensor, topk_log_probs: torch.Tensor,
                    hits: torch.Tensor, cur_len: torch.Tensor) -> None:
    """HF's finished-beam bookkeeping: merge this step's finished candidates among the
    top num_beams into each slot's best num_beams finished ones."""
    plan, st = d.plan, d.state
    G, K, T1 = plan.group, plan.beams_to_keep, st.hist.shape[1]
    did_finish = hits & d.top_mask[None, :]
    cand = topk_log_probs / d.denom[cur_len][:, None]
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


def _done(d: Decoding, n: int, new_scores: torch.Tensor, hits: torch.Tensor, cur_len: torch.Tensor) -> torch.Tensor:
    """HF's early-stop heuristic, evaluated after the step (cur_len + 1 tokens)."""
    plan, st = d.plan, d.state
    if plan.early_stopping == "never" and plan.length_penalty > 0.0:
        best_denom = d.denom[plan.max_length - 1]
    else:
        best_denom = d.denom[cur_len][:, None]
    best_possible = new_scores[:, :1] / best_denom
    worst = torch.where(st.fin_flag[:n], torch.min(st.fin_scores[:n], dim=1, keepdim=True)[0], -1.0e9)
    st.heur[:n] &= torch.any(best_possible > worst, dim=-1)
    done = ~st.heur[:n] | hits.all(dim=-1)
    if plan.early_stopping is True:
        done |= st.fin_flag[:n].all(dim=-1)
    return done


def reorder(d: Decoding, src: torch.Tensor, N: int) -> None:
    """Rows i of the self-attention caches become rows src[i].

    Only columns whose origin stamp differs from the new parent's move, up to the
    row's current age: the same stamp means copies of one computation, the same bits.
    A beam and its new parent differ only past their common ancestry (mostly the last
    few columns), and a row that keeps its own beam moves nothing. Copying each
    changed row's whole written prefix instead was 20% of a base-size beam search.
    """
    st, runner = d.state, d.runner
    width = d.self_w  # every row's written columns lie in the first self_w
    parent = st.origin[src]
    moves = (st.origin[:N, :width] != parent[:, :width]) & (st.columns[:width] <= st.age[:N, None])
    rows, cols = moves.nonzero().unbind(1)
    st.origin[:N] = parent
    if rows.numel() == 0:
        return
    # one flat index per moved column: a column is one block of 2 * heads * head_dim in the flat cache
    to_at, from_at = runner.row_base[rows] + cols, runner.row_base[src[rows]] + cols
    for cache in runner.kv_cache:
        flat = cache.view(-1, 2 * runner.desc.inner)
        flat.index_put_((to_at,), flat.index_select(0, from_at))
