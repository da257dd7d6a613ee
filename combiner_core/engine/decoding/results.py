"""Finished slots as Generated candidates, trimmed and scored as hf_generate does."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..outputs import Generated, trim_generated
from .state import Decoding


def collect(
    d: Decoding, finished: list[int], inputs: list[int], pad_id: int,
    decode: Callable[[list[list[int]]], list[str]],
) -> dict[int, list[Generated]]:
    """The candidates of each finished slot, by the input it held (`inputs[slot]`).

    Beam search: the slot's best num_return_sequences finished beams with their beam
    scores. Greedy / sampling: each row's tokens and their mean log-prob, non-finite
    steps left out. `decode` turns token lists into texts (the decoder tokenizer).
    """
    plan, st = d.plan, d.state
    device = st.hist.device
    G = plan.group
    eos = set(plan.eos_ids)
    s_t = torch.tensor(finished, device=device)
    cands: list[tuple[int, list[int]]] = []  # (slot index in `finished`, tokens)
    if plan.mode == "beam":
        R = plan.num_return
        seqs = st.fin_seq[s_t, :R].cpu().tolist()
        lens = st.fin_len[s_t, :R].cpu().tolist()
        flat_scores = st.fin_scores[s_t, :R].reshape(-1).cpu().tolist()
        for k in range(len(finished)):
            for r in range(R):
                cands.append((k, trim_generated(seqs[k][r][1 : 1 + lens[k][r]], pad=pad_id, eos=eos)))
    else:
        R = G
        rows = (s_t[:, None] * G + torch.arange(G, device=device)[None, :]).reshape(-1)
        hist = st.hist[rows, 1:].cpu().tolist()
        lens = (st.row_len if G > 1 else st.age)[rows].cpu().tolist()
        for r in range(len(rows)):
            cands.append((r // G, trim_generated(hist[r][: lens[r]], pad=pad_id, eos=eos)))
        # mean log-prob of the kept tokens, non-finite steps left out (as hf_generate)
        kept = torch.tensor([len(t) for _, t in cands], device=device)
        logp = st.step_logp[rows]
        use = (torch.arange(logp.shape[1], device=device)[None, :] < kept[:, None]) & torch.isfinite(logp)
        count = use.sum(dim=1)
        mean = torch.where(use, logp, 0.0).sum(dim=1) / count.clamp(min=1)
        flat_scores = torch.where(count > 0, mean, 0.0).cpu().tolist()
    texts = decode([t for _, t in cands])
    return {
        inputs[s]: [
            Generated(text=texts[i].strip(), token_ids=tuple(cands[i][1]), score=float(flat_scores[i]),
                      num_tokens=len(cands[i][1]))
            for i in range(k * R, (k + 1) * R)
        ]
        for k, s in enumerate(finished)
    }
