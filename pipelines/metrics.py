"""Generation metrics for evaluation: exact match, BLEU, chrF (sacrebleu) and ROUGE (rouge-score)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

METRICS = ("exact_match", "bleu", "chrf", "rouge")


def normalize_for_match(text: str | None) -> str:
    """What exact match compares: case and runs of whitespace ignored, nothing else.

    "A red  circle" matches "a red circle"; "a red circle." does not. casefold, not
    lower: "Straße" matches "STRASSE", as a reader would expect.
    """
    return " ".join((text or "").split()).casefold()


def exact_match_count(pairs: Iterable[tuple[str | None, str | None]]) -> int:
    """How many (prediction, reference) pairs match under normalize_for_match."""
    return sum(normalize_for_match(p) == normalize_for_match(r) for p, r in pairs)


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, split after . ! ? followed by whitespace (and at newlines)."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> object:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F1 of one pair, as the rouge-score package computes them (stemming on).

    rougeLsum is summary-level LCS over sentences, as published summarization numbers
    use: both texts get one sentence per line first (split_sentences).
    """
    scorer = _rouge_scorer()
    plain = scorer.score(reference, prediction)
    lsum = scorer.score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
    out = {key: plain[key].fmeasure for key in ("rouge1", "rouge2", "rougeL")}
    out["rougeLsum"] = lsum["rougeLsum"].fmeasure
    return out


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], *, metrics: Iterable[str] = METRICS
) -> dict[str, float]:
    """Corpus-level scores of `predictions` against one reference each.

    exact_match is a fraction in [0, 1]; bleu and chrf are sacrebleu's 0-100
    corpus scores; rouge1 / rouge2 / rougeL / rougeLsum are mean F1 in [0, 1] (rouge-score,
    with stemming).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    wanted = set(metrics)
    unknown = wanted - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
    out: dict[str, float] = {"num_scored": float(len(predictions))}
    if not predictions:
        return out
    if "exact_match" in wanted:
        hits = exact_match_count(zip(predictions, references, strict=True))
        out["exact_match"] = hits / len(predictions)
    if "bleu" in wanted or "chrf" in wanted:
        import sacrebleu

        if "bleu" in wanted:
            out["bleu"] = float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
        if "chrf" in wanted:
            out["chrf"] = float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)
    if "rouge" in wanted:
        totals: dict[str, float] = {}
        for pred, ref in zip(predictions, references, strict=True):
            for key, value in rouge_f1(pred, ref).items():
                totals[key] = totals.get(key, 0.0) + value
        out.update({key: value / len(predictions) for key, value in totals.items()})
    return out
