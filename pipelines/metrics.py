"""Generation metrics for evaluation: exact match, BLEU, chrF (sacrebleu) and ROUGE (rouge-score)."""

from __future__ import annotations

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


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], *, metrics: Iterable[str] = METRICS
) -> dict[str, float]:
    """Corpus-level scores of `predictions` against one reference each.

    exact_match is a fraction in [0, 1]; bleu and chrf are sacrebleu's 0-100
    corpus scores; rouge1 / rouge2 / rougeL are mean F1 in [0, 1] (rouge-score,
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
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred)
            for key in totals:
                totals[key] += scores[key].fmeasure
        out.update({key: value / len(predictions) for key, value in totals.items()})
    return out
