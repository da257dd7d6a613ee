"""The synthetic summarization set (pipelines/demo_data/facts.py), its bundled sample and model.

Fast: no Ray, no model weights (the bundled summarizer's tokenizer and config only).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from combiner_core import load_preprocessor
from combiner_core.vocab import build_word_tokenizer
from pipelines.demo_data import facts

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "jobs" / "sample" / "docs"
MODEL = REPO / "models" / "demo-summarizer"
SPEC = REPO / "jobs" / "specs" / "finetune_demo_summarizer.yaml"

# A filler sentence is any FILLERS template with its slots filled by one word.
_FILLER = re.compile(
    "|".join("(?:" + re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(t)) + ")" for t in facts.FILLERS)
)


def _sentences(text: str) -> list[str]:
    """Split at sentence ends: the boundaries the summarize job windows at."""
    return [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s]


def _fact_sentences(text: str) -> list[str]:
    return [s for s in _sentences(text) if not _FILLER.fullmatch(s) and s != facts.QUIET_SUMMARY]


@pytest.fixture(scope="module")
def train() -> list[facts.Example]:
    return list(facts.iter_examples("train", 3000))


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(facts.vocabulary(), model_max_length=facts.MAX_DOC_TOKENS)


def test_same_arguments_same_bytes(tmp_path):
    assert list(facts.iter_examples("eval", 300)) == list(facts.iter_examples("eval", 300))
    first = facts.write_split(tmp_path / "a", "heldout", 200).read_bytes()
    assert facts.write_split(tmp_path / "b", "heldout", 200).read_bytes() == first
    # A longer split starts with the shorter one: counts only cut the stream.
    assert list(facts.iter_examples("eval", 50)) == list(facts.iter_examples("eval", 300))[:50]


def test_splits_differ():
    assert len(set(facts.SPLIT_SEEDS.values())) == len(facts.SPLIT_SEEDS)
    # Documents of several sentences with a key fact never recur across splits (a
    # bare fact, a few filler sentences or a joined one-fact summary may: few exist).
    docs = {
        split: {
            e.text for e in facts.iter_examples(split, 500) if e.key_facts and len(_sentences(e.text)) > 1
        }
        for split in facts.SPLIT_SEEDS
    }
    assert not docs["train"] & docs["eval"]
    assert not docs["train"] & docs["heldout"]
    assert not docs["eval"] & docs["heldout"]


def test_summary_length_follows_key_facts(train):
    tokens: dict[int, list[int]] = defaultdict(list)
    for e in train:
        # One summary sentence per key fact (the quiet summary for none), in document order.
        assert len(_sentences(e.summary)) == max(1, e.key_facts), e
        if e.kind == "document":
            assert len(_fact_sentences(e.text)) == e.key_facts, e
        tokens[e.key_facts].append(facts.count_tokens(e.summary))
    means = [sum(tokens[k]) / len(tokens[k]) for k in sorted(tokens)]
    assert sorted(tokens) == [0, 1, 2, 3]
    assert means[1] < means[2] < means[3]


def test_documents_vary_in_length_and_place_facts_anywhere(train):
    docs = [e for e in train if e.kind == "document"]
    lengths = sorted(facts.count_tokens(e.text) for e in docs)
    assert lengths[len(lengths) // 10] < 30 and lengths[-len(lengths) // 10] > 90
    assert max(lengths) <= facts.MAX_DOC_TOKENS
    # Key facts open some documents, close others, and sit in the middle of the rest.
    first, last, middle = 0, 0, 0
    for e in docs:
        sentences, key = _sentences(e.text), set(_fact_sentences(e.text))
        first += sentences[0] in key
        last += sentences[-1] in key
        middle += any(s in key for s in sentences[1:-1])
    for share in (first, last, middle):
        assert 0.1 < share / len(docs) < 0.9


def test_joined_summaries_keep_their_key_facts(train):
    rows = [e for e in train if e.kind == "summaries"]
    assert 0.12 < len(rows) / len(train) < 0.18
    for e in rows:
        # Quiet windows' lines dropped; a line repeated by overlapping windows kept once.
        kept = [s for s in _sentences(e.text) if s != facts.QUIET_SUMMARY]
        kept = [s for i, s in enumerate(kept) if i == 0 or s != kept[i - 1]]
        assert e.summary == (" ".join(kept) if kept else facts.QUIET_SUMMARY)
    assert any(facts.QUIET_SUMMARY in e.text and e.key_facts for e in rows)
    assert any(len(set(_sentences(e.text))) < len(_sentences(e.text)) and e.key_facts for e in rows)
    # Summarizing a summary with no quiet or repeated line gives it back unchanged.
    assert any(e.text == e.summary and e.key_facts == 3 for e in rows)


def test_every_token_is_in_the_vocabulary(train, tokenizer):
    vocab = set(facts.vocabulary())
    examples = train + list(facts.iter_sample())
    for e in examples:
        for text in (e.text, e.summary):
            assert set(re.findall(r"\w+|[^\w\s]", text.lower())) <= vocab, text
    unk = tokenizer.unk_token_id
    for e in examples[:300]:
        ids = tokenizer(e.text)["input_ids"]
        assert unk not in ids
        assert len(ids) == facts.count_tokens(e.text)
        # Summaries are written as the tokenizer decodes them, so exact match is fair.
        summary_ids = tokenizer(e.summary, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(summary_ids) == e.summary


def test_bundled_sample_is_what_the_generator_writes(tmp_path):
    shipped = sorted(SAMPLE.glob("*.jsonl"))
    written = facts.write_sample(tmp_path)
    assert [p.name for p in shipped] == [p.name for p in written]
    for ours, theirs in zip(shipped, written, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), ours
    rows = [json.loads(line) for p in shipped for line in p.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in facts.iter_sample()]
    assert all(set(r) == {"id", "text", "summary"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows) == 100


def test_long_sample_documents_exceed_the_bundled_models_limit():
    pre = load_preprocessor(str(MODEL))  # tokenizer and config; no weights read
    limit = pre.max_input_tokens
    assert limit == facts.MAX_DOC_TOKENS
    # The model was trained with the generator's word list (data/summaries/vocab.txt).
    assert set(pre.tokenizer.get_vocab()) == {*facts.vocabulary(), "[PAD]", "[BOS]", "[EOS]", "[UNK]"}
    over = []
    for e in facts.iter_sample():
        n = len(pre.tokenizer(e.text)["input_ids"])
        assert pre.tokenizer.unk_token_id not in pre.tokenizer(e.text)["input_ids"]
        if n > limit:
            over.append(e)
            # Key facts are spread: one lies past the first window, so truncation would lose it.
            last = _fact_sentences(e.text)[-1]
            assert facts.count_tokens(e.text[: e.text.index(last)]) > limit, e.id
            assert len(_fact_sentences(e.text)) == e.key_facts == len(_sentences(e.summary))
    assert 5 <= len(over) <= 10
    assert {e.kind for e in over} == {"long"}


def test_spec_reads_what_make_demo_data_writes():
    from pipelines import load_spec
    from pipelines.finetune import FinetuneSpec

    spec = load_spec(FinetuneSpec, SPEC)
    # Paths in the spec are relative to its folder: the checkout's data/, from any folder.
    assert spec.model.random is not None and spec.model.random.words_file == str(REPO / "data/summaries/vocab.txt")
    assert spec.data.train.uri == str(REPO / "data/summaries/train") and spec.data.train.target_column == "summary"
    encoder, decoder = spec.model.random.encoder_config, spec.model.random.decoder_config
    # The encoder limit is the smaller of these two; both are the generator's.
    assert encoder["max_position_embeddings"] == decoder["n_positions"] == facts.MAX_DOC_TOKENS
    assert spec.export.uri == str(MODEL)
    assert set(spec.evaluation.metrics) >= {"exact_match", "rouge"}
