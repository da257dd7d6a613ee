"""Generation through combiner_core against transformers' own generate, on tiny models."""

from __future__ import annotations

import pytest
import torch

import tests.support.combos as combos
from combiner_core import (
    Combiner,
    GenerationParams,
    generate,
)


@pytest.fixture(scope="module", params=combos.COMBOS)
def combiner(request) -> Combiner:
    return combos.build(request.param)


def _hf_reference(c: Combiner, batch: dict[str, torch.Tensor], params: GenerationParams) -> list[tuple[int, ...]]:
    """transformers' generate, called directly with the same parameters."""
    kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=False)
    if params.strategy == "beam":
        kwargs.update(num_beams=params.num_beams, length_penalty=params.length_penalty, early_stopping=params.early_stopping)
    with torch.inference_mode():
        sequences = c.model.generate(**batch, **kwargs)
    eos, pad = c.model.generation_config.eos_token_id, c.model.generation_config.pad_token_id
    out = []
    for row in sequences[:, 1:].tolist():
        kept = []
        for t in row:
            kept.append(t)
            if t == eos:
                break
        while kept and kept[-1] == pad and pad != eos:
            kept.pop()
        out.append(tuple(kept))
    return out


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_matches_hf_generate_and_padded_batch_matches_rows(combiner: Combiner, strategy: str) -> None:
    params = GenerationParams(strategy=strategy, max_new_tokens=8, num_beams=3)
    batch = combos.batch(combiner)
    ours = [row[0].token_ids for row in generate(combiner, batch, params)]
    assert ours == _hf_reference(combiner, batch, params)
    one_by_one = [generate(combiner, row, params)[0][0].token_ids for row in combos.rows(combiner)]
    assert ours == one_by_one
    # Inputs differ, so a model that ignores its encoder would fail here.
    assert len(set(ours)) > 1, f"all inputs gave the same output {ours[0]}"


def test_beam_returns_ranked_candidates_with_scores(combiner: Combiner) -> None:
    params = GenerationParams(strategy="beam", num_beams=4, num_return_sequences=3, max_new_tokens=6)
    rows = generate(combiner, combos.batch(combiner), params)
    assert len(rows) == (len(combos.IMAGES) if combiner.modality == "image" else len(combos.TEXTS))
    for candidates in rows:
        assert len(candidates) == 3
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True)
        assert all(c.num_tokens == len(c.token_ids) <= 6 for c in candidates)


def test_sampling_is_seeded(combiner: Combiner) -> None:
    params = GenerationParams(strategy="sample", seed=7, top_k=0, temperature=1.5, num_return_sequences=2, max_new_tokens=6)
    first = generate(combiner, combos.batch(combiner), params)
    second = generate(combiner, combos.batch(combiner), params)
    assert [[c.token_ids for c in r] for r in first] == [[c.token_ids for c in r] for r in second]
    assert all(len(r) == 2 for r in first)
    other = generate(combiner, combos.batch(combiner), params.model_copy(update={"seed": 8}))
    assert [[c.token_ids for c in r] for r in other] != [[c.token_ids for c in r] for r in first]


def test_length_and_repetition_controls(combiner: Combiner) -> None:
    batch = combos.batch(combiner)
    minimum = generate(combiner, batch, GenerationParams(min_new_tokens=5, max_new_tokens=5))
    eos = combiner.model.generation_config.eos_token_id
    for row in minimum:
        assert row[0].num_tokens == 5 and eos not in row[0].token_ids[:4]
    no_repeat = generate(combiner, batch, GenerationParams(no_repeat_ngram_size=1, max_new_tokens=8))
    for row in no_repeat:
        ids = row[0].token_ids
        assert len(ids) == len(set(ids)), f"a token repeats despite no_repeat_ngram_size=1: {ids}"


def test_params_reject_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="num_beams >= 2"):
        GenerationParams(strategy="beam", num_beams=1)
    with pytest.raises(ValueError, match="num_return_sequences=5 > num_beams=4"):
        GenerationParams(strategy="beam", num_beams=4, num_return_sequences=5)
    with pytest.raises(ValueError, match="strategy=greedy would repeat"):
        GenerationParams(num_return_sequences=2)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GenerationParams(beams=3)
