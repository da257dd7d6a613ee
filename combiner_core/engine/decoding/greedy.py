"""One step of greedy search or sampling for rows at their own lengths."""

from __future__ import annotations

import torch

from .processors import apply
from .state import Decoding


def token_step(d: Decoding, logits: torch.Tensor, n: int) -> torch.Tensor:
    """Choose each row's next token (argmax, or Gumbel-max sampling), record its
    log-prob and history, and return which of the n slots are done."""
    plan, st, runner = d.plan, d.state, d.runner
    if d.pick is not None:
        pad = runner.desc.pos_padding_idx
        return d.pick(
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
        tok = torch.argmax(logp + d.sampler.gumbel(st.stream[:N], age), dim=-1)
    else:
        tok = torch.argmax(scores, dim=-1)
    logp_tok = logp.gather(1, tok[:, None])
    st.step_logp[:N].scatter_(1, age[:, None], logp_tok)
    st.hist[:N].scatter_(1, cur_len[:, None], tok[:, None])
    if len(plan.eos_ids) == 1:
        ends = (tok == plan.eos_ids[0]) | (cur_len >= plan.max_length - 1)
    else:
        ends = torch.isin(tok, d.eos) | (cur_len >= plan.max_length - 1)
    runner.tok_in[:N] = tok
    runner.advance(N)
    if G == 1:  # the slot ends with its row; its length is its age (read when collected)
        return ends
    newly = ends & ~st.row_done[:N]
    st.row_len[:N] = torch.where(newly, cur_len, st.row_len[:N])
    st.row_done[:N] |= ends
    return st.row_done[:N].view(n, G).all(dim=1)
