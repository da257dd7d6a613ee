"""Long documents: windows at sentence boundaries and summaries of window summaries (no Ray)."""

from __future__ import annotations

import torch

from combiner_core import Generated, split_windows, summarize_windows
from combiner_core.chunking import sentences
from combiner_core.vocab import build_word_tokenizer

FILLER = "the cat sat on the mat and the dog sat in the sun"
FACTS = [f"fact{i}" for i in range(40)]
TOKENIZER = build_word_tokenizer(FILLER.split() + FACTS + ["."], model_max_length=32)
LIMIT = 32


def _document(facts: list[str]) -> str:
    """Sentences of filler, each carrying one fact, so facts are spread over the whole text."""
    return " ".join(f"{FILLER} {fact} ." for fact in facts)


def test_short_text_is_one_window_equal_to_the_tokenizer() -> None:
    text = "the cat sat . the dog sat ."
    assert split_windows(TOKENIZER, text, max_tokens=LIMIT) == [TOKENIZER(text)["input_ids"]]


def test_long_text_windows_fit_end_on_sentences_and_overlap_by_one() -> None:
    text = _document(FACTS[:10])
    whole = len(TOKENIZER(text)["input_ids"])
    windows = split_windows(TOKENIZER, text, max_tokens=LIMIT)
    assert whole > 4 * LIMIT and len(windows) > 4
    assert all(len(w) <= LIMIT for w in windows)
    decoded = [TOKENIZER.decode(w, skip_special_tokens=True) for w in windows]
    for window in decoded:
        assert all(s.endswith(".") for s in sentences(window)), window  # whole sentences only
    seen = [{f for f in FACTS[:10] if f in w.split()} for w in decoded]
    assert set().union(*seen) == set(FACTS[:10])  # every sentence is in some window
    for before, after in zip(seen, seen[1:], strict=False):
        assert before & after, (before, after)  # neighbours share a sentence


def test_a_document_ten_times_the_limit_is_summarized_from_every_window() -> None:
    """The facts of every window reach the final summary, through summaries of summaries."""
    facts = FACTS[:24]
    text = _document(facts)
    assert len(TOKENIZER(text)["input_ids"]) >= 10 * LIMIT
    calls: list[int] = []

    def generate(ids: list[list[int]], keys: list[str]) -> list[list[Generated]]:
        # A stand-in summarizer: keeps each fact of its input once, drops the filler.
        calls.append(len(ids))
        outs = []
        for x in ids:
            words = TOKENIZER.decode(x, skip_special_tokens=True).split()
            kept = list(dict.fromkeys(w for w in words if w.startswith("fact")))
            summary = " ".join(kept) + " ."
            outs.append([Generated(text=summary, token_ids=tuple(TOKENIZER(summary)["input_ids"]), score=-0.5,
                                   num_tokens=len(kept) + 1)])
        return outs

    windows = split_windows(TOKENIZER, text, max_tokens=LIMIT)
    short = split_windows(TOKENIZER, "the cat sat .", max_tokens=LIMIT)
    [long_summary, short_summary] = summarize_windows(
        generate, TOKENIZER, [windows, short], ["doc-long", "doc-short"], max_tokens=LIMIT
    )
    assert set(long_summary.candidates[0].text.replace(".", " ").split()) == set(facts)
    assert long_summary.windows == len(windows) >= 10 and long_summary.levels >= 2
    assert short_summary.windows == 1 and short_summary.levels == 1
    # Level 1 ran every window of both documents in one call (one engine batch).
    assert calls[0] == len(windows) + 1


def test_bundled_summarizer_keeps_the_facts_of_every_window_of_a_long_document() -> None:
    """A document ten times the demo summarizer's 128-token limit, its key facts spread
    over the whole of it: the summary, built from every window's summary, keeps them all."""
    import random
    from pathlib import Path

    from combiner_core import GenerationEngine, GenerationParams, load_combiner
    from pipelines.demo_data.facts import _long_document

    model = Path(__file__).resolve().parents[2] / "models" / "demo-summarizer"
    c = load_combiner(str(model))
    limit = c.max_input_tokens
    text, reference, facts = _long_document(random.Random(11), min_tokens=10 * limit, max_tokens=11 * limit)
    windows = split_windows(c.tokenizer, text, max_tokens=limit)
    assert len(c.tokenizer(text)["input_ids"]) >= 10 * limit and len(windows) >= 10
    engine = GenerationEngine(c, GenerationParams(max_new_tokens=48))
    seen: list[list[list[int]]] = []

    def generate(ids, keys):
        seen.append(ids)
        return engine.generate_token_ids([torch.tensor(x) for x in ids], row_keys=keys)

    outputs: list[list[str]] = []

    def record(ids, keys):
        out = generate(ids, keys)
        outputs.append([c[0].text for c in out])
        return out

    [summary] = summarize_windows(record, c.tokenizer, [windows], ["long"], max_tokens=limit)
    # Level 1 summarized every window, and level 2 read every one of those summaries.
    assert seen[0] == windows and summary.windows == len(windows) and summary.levels >= 2
    level2 = " ".join(c.tokenizer.decode(ids, skip_special_tokens=True) for ids in seen[1])
    assert level2.split() == " ".join(outputs[0]).split()
    # The facts of the windows reach the final summary: at least one of them verbatim (the
    # small model is trained on documents of one window; it paraphrases others), and one
    # sentence per key fact as in its training.
    produced = summary.candidates[0].text
    assert any(fact.rstrip(" .") in produced for fact in sentences(reference)), (reference, produced)
    assert len(sentences(produced)) >= facts >= 2
