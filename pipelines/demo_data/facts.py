"""A deterministic synthetic summarization set: short news items made of facts and filler.

A document is one to a dozen or so sentences. Some sentences state a *key fact* (a
trip, a sale, a storm, a meeting, a win, an opening); the others are *filler*
that carries no fact, some of it naming the same people, cities and days so that
a model has to read a sentence's structure, not spot a name. The reference
summary keeps one short sentence per key fact, in document order: a document
with one key fact gets a one-sentence summary, one with three gets three. A
document with no key fact (a quiet day) is summarized as "nothing of note
happened .".

Hierarchical use: the summarize job cuts documents longer than the encoder's
limit into windows at sentence boundaries, summarizes each window, then
summarizes the joined window summaries. So about 15% of the rows in every split
are such joined summaries (with "nothing of note happened ." from windows that
held only filler, and a line twice where neighbouring windows shared a fact's
sentence); their reference keeps every key fact once and drops the rest, so
summarizing a summary gives it back unchanged. Key facts fall
anywhere in a document, the end included, and in the long documents of the
bundled sample they are spread over the whole length, one per stretch.

Text form: documents are written as ordinary prose ("Anna sold six lamps.");
summaries are written exactly as the demo model's word-level tokenizer decodes
its output (lower case, a space before punctuation: "anna sold six lamps ."),
so that exact match against a reference is meaningful. The tokenizer lower-cases
and splits punctuation, so both forms give the same token ids.

Every split fits the encoder's limit (`max_tokens`, EOS included), so no training
target refers to a sentence that truncation cut off; only `iter_sample` writes
documents beyond it. The same arguments always give the same bytes; train / eval
/ held-out use different seeds. No Ray here.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The demo summarizer's encoder limit in tokens (EOS included): split documents
# stay within it; the sample's long documents go past it.
MAX_DOC_TOKENS = 128
SPLIT_SEEDS = {"train": 21, "eval": 22, "heldout": 23}
LONG_SEED = 24  # the sample's long documents: a stream no split draws from
# Share of rows that are joined window summaries, and of ordinary documents
# without any key fact (what a window of pure filler looks like).
SUMMARY_ROW_SHARE = 0.15
QUIET_SHARE = 0.06
QUIET_SUMMARY = "nothing of note happened ."

NAMES = (
    "anna", "ben", "carla", "david", "elena", "frank", "grace", "hugo", "iris", "jonas", "karin", "leo",
)
CITIES = (
    "oslo", "rome", "paris", "vienna", "lisbon", "dublin", "prague", "madrid", "berlin", "athens",
    "warsaw", "zurich",
)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
ROLES = ("baker", "doctor", "teacher", "farmer", "pilot", "writer", "painter", "lawyer")
GOODS = ("apples", "books", "lamps", "chairs", "bikes", "coats", "clocks", "boats")
DISASTERS = ("storm", "flood", "fire")
PLACES = ("bridge", "port", "school", "station", "market", "museum")
TOPICS = ("budget", "plan", "contract", "road", "park")
CONTESTS = ("chess", "football", "rowing", "quiz", "tennis")
BUILDINGS = ("library", "hospital", "theatre", "school", "museum", "stadium")
MOODS = ("calm", "busy", "slow", "long", "quiet")
WEATHER = ("mild", "cold", "warm", "grey", "windy", "wet")
SEASONS = ("winter", "summer", "spring", "autumn")

# Tokens as the word-level tokenizer (whitespace, then each punctuation mark
# alone) sees them; the demo tokenizer adds one EOS.
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Example:
    """One row and what the tests check about it.

    Attributes:
        id: unique within its split ("train-000042", "long-0003").
        text: the document.
        summary: the reference summary (one sentence per key fact, or QUIET_SUMMARY).
        key_facts: how many key facts the text holds.
        kind: "document", "summaries" (joined window summaries) or "long" (sample only).
    """

    id: str
    text: str
    summary: str
    key_facts: int
    kind: str

    def row(self) -> dict[str, str]:
        """What the JSONL files hold: {id, text, summary}."""
        return {"id": self.id, "text": self.text, "summary": self.summary}


def count_tokens(text: str) -> int:
    """Tokens the demo tokenizer gives `text`, its EOS included."""
    return len(_TOKEN.findall(text)) + 1


@dataclass(frozen=True)
class FactKind:
    """One kind of key fact: phrasings for the document and the summary sentence.

    Templates name slots ({name}, {city2}, ...; capitalized, {Name}, for the
    capitalized value). Every phrasing carries details (a role, a day, a second
    city) that the summary drops, and several phrasings share one summary.
    """

    name: str
    documents: tuple[str, ...]
    summary: str


FACT_KINDS = (
    FactKind(
        "trip",
        (
            "{Name}, the {role} from {City}, travelled to {City2} on {Day}.",
            "On {Day}, {Name} the {role} took the train from {City} to {City2}.",
        ),
        "{name} travelled to {city2} .",
    ),
    FactKind(
        "sale",
        (
            "On {Day}, {Name} sold {number} {goods} to a shop in {City}.",
            "At the market in {City}, {Name} sold {number} {goods} before noon.",
        ),
        "{name} sold {number} {goods} .",
    ),
    FactKind(
        "disaster",
        (
            "A {disaster} hit {City} early on {Day} and closed the {place}.",
            "The {place} in {City} was closed after a {disaster} hit the city on {Day}.",
        ),
        "a {disaster} hit {city} .",
    ),
    FactKind(
        "meeting",
        (
            "{Name} met {Name2} in {City} to discuss the new {topic}.",
            "In {City}, {Name} met {Name2} for an hour to talk about the {topic}.",
        ),
        "{name} met {name2} in {city} .",
    ),
    FactKind(
        "win",
        (
            "The team from {City} won the {contest} final against {City2} by {number} points.",
            "In the {contest} final, {City} beat {City2} by {number} points.",
        ),
        "{city} won the {contest} final .",
    ),
    FactKind(
        "opening",
        (
            "The city of {City} opened a new {building} near the river on {Day}.",
            "On {Day}, a new {building} opened its doors in {City}.",
        ),
        "{city} opened a new {building} .",
    ),
)

# Sentences with no key fact. Some name a person, a city or a day, as facts do,
# so that telling them apart takes reading the sentence, not spotting a name.
FILLERS = (
    "The weather was {weather} for most of the week.",
    "Many people in {City} stayed at home that evening.",
    "Nothing else of interest was reported.",
    "Local papers wrote about the news at length.",
    "The streets were quiet after {Day}.",
    "Some people said it had been a long {season}.",
    "Prices in the shops did not change much.",
    "Most of the trains ran on time.",
    "It was a {mood} day for everyone.",
    "Children played in the park near the river.",
    "{Name} said that the week had felt {mood}.",
    "Later that day, {Name} went for a walk.",
    "The sky over {City} was {weather} on {Day}.",
    "Nobody in {City} expected much to change.",
)

# Values of each slot; name2 / city2 are drawn from the same lists as name /
# city but always differ from them.
SLOTS: dict[str, tuple[str, ...]] = {
    "name": NAMES, "name2": NAMES, "city": CITIES, "city2": CITIES, "day": DAYS, "number": NUMBERS,
    "role": ROLES, "goods": GOODS, "disaster": DISASTERS, "place": PLACES, "topic": TOPICS,
    "contest": CONTESTS, "building": BUILDINGS, "mood": MOODS, "weather": WEATHER, "season": SEASONS,
}
_SLOT = re.compile(r"\{(\w+)\}")


def _draw_slots(rng: random.Random) -> dict[str, str]:
    """A value for every slot (each draw consumes the same randomness, whatever the template)."""
    values = {}
    for slot, choices in SLOTS.items():
        if slot in ("name2", "city2"):
            first = values[slot[:-1]]
            choices = tuple(c for c in choices if c != first)
        values[slot] = rng.choice(choices)
    values.update({slot.capitalize(): value.capitalize() for slot, value in list(values.items())})
    return values


def _fact(rng: random.Random) -> tuple[str, str]:
    """A random key fact: (document sentence, summary sentence)."""
    kind = rng.choice(FACT_KINDS)
    phrasing = rng.choice(kind.documents)
    values = _draw_slots(rng)
    return phrasing.format(**values), kind.summary.format(**values)


def _fillers(rng: random.Random, count: int) -> list[str]:
    """`count` sentences with no key fact.

    Templates are dealt from shuffled decks, so a document repeats one only after
    using them all (a long document does; a short one reads as varied prose).
    """
    templates: list[str] = []
    while len(templates) < count:
        templates += rng.sample(FILLERS, len(FILLERS))
    return [template.format(**_draw_slots(rng)) for template in templates[:count]]


# --- documents -------------------------------------------------------------------------


def _arrange(facts: list[tuple[str, str]], fillers: list[str], slots: set[int]) -> str:
    """The document: fact sentences at the indices in `slots`, filler everywhere else."""
    fact_iter, filler_iter = iter(facts), iter(fillers)
    return " ".join(
        next(fact_iter)[0] if i in slots else next(filler_iter) for i in range(len(facts) + len(fillers))
    )


def _distinct_facts(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` key facts with different summaries.

    A repeated line in joined window summaries means two windows saw the same
    sentence (see _joined_summaries), never two equal facts.
    """
    facts: list[tuple[str, str]] = []
    while len(facts) < count:
        fact = _fact(rng)
        if all(fact[1] != summary for _, summary in facts):
            facts.append(fact)
    return facts


def _fact_count(rng: random.Random) -> int:
    return 0 if rng.random() < QUIET_SHARE else rng.choice((1, 2, 3))


def _document(rng: random.Random, *, max_tokens: int) -> tuple[str, str, int]:
    """An ordinary document within `max_tokens`: (text, summary, key facts)."""
    facts = _distinct_facts(rng, _fact_count(rng))
    # Lengths vary from a bare fact to a page that fills the encoder: a third
    # short (0-2 filler sentences), a third medium (2-5), a third long (5-12).
    low, high = rng.choice(((0, 2), (2, 5), (5, 12)))
    fillers = _fillers(rng, max(rng.randint(low, high), 0 if facts else 3))
    # Drop filler until the document fits; the facts always fit (3 facts < 60 tokens).
    while fillers and count_tokens(" ".join([d for d, _ in facts] + fillers)) > max_tokens:
        fillers.pop()
    # Facts take random slots among all sentences, so they land anywhere, the end included.
    slots = set(rng.sample(range(len(facts) + len(fillers)), len(facts)))
    summary = " ".join(s for _, s in facts) if facts else QUIET_SUMMARY
    return _arrange(facts, fillers, slots), summary, len(facts)


def _joined_summaries(rng: random.Random) -> tuple[str, str, int]:
    """What the reduce step of hierarchical summarizing reads: window summaries joined.

    One to three fact summaries, in order. The summarize job's windows share a
    sentence with their neighbour, so a fact in that sentence is summarized by
    both windows: sometimes a line comes twice in a row. Windows of pure filler
    add "nothing of note happened ." lines between them. The reference keeps each
    fact once, in order, and drops the quiet lines.
    """
    if rng.random() < 0.03:  # every window was quiet
        return " ".join([QUIET_SUMMARY] * rng.choice((2, 3))), QUIET_SUMMARY, 0
    facts = [summary for _, summary in _distinct_facts(rng, rng.choice((1, 2, 3)))]
    # One group per window boundary: a fact line, or a fact line twice (overlap).
    groups = [[line, line] if rng.random() < 0.12 else [line] for line in facts]
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3))):
        groups.insert(rng.randint(0, len(groups)), [QUIET_SUMMARY])
    return " ".join(line for group in groups for line in group), " ".join(facts), len(facts)


def _long_document(rng: random.Random, *, min_tokens: int, max_tokens: int) -> tuple[str, str, int]:
    """A document of about min_tokens..max_tokens with 2-3 key facts spread over its length.

    The document is made of one stretch per fact, each about an equal share of the
    length in tokens, with its fact at a random place inside: with min_tokens at
    least twice the encoder's limit, the last fact starts past the first window,
    so a summary of a truncated document would miss it.
    """
    facts = _distinct_facts(rng, rng.choice((2, 3, 3)))
    share = rng.randint(min_tokens, max_tokens) / len(facts)
    # Every filler sentence has at least 7 tokens: enough sentences for any share.
    deck = iter(_fillers(rng, int(max_tokens / 7) + len(facts)))
    stretches = []
    for sentence, _ in facts:
        fillers: list[str] = []
        while count_tokens(" ".join([sentence, *fillers])) - 1 < share:
            fillers.append(next(deck))
        fillers.insert(rng.randint(0, len(fillers)), sentence)
        stretches.append(" ".join(fillers))
    return " ".join(stretches), " ".join(s for _, s in facts), len(facts)


def iter_examples(split: str, count: int, *, max_tokens: int = MAX_DOC_TOKENS) -> Iterator[Example]:
    """`count` examples of `split`, deterministically; every text within `max_tokens`."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")
    rng = random.Random(SPLIT_SEEDS[split])
    for i in range(count):
        if rng.random() < SUMMARY_ROW_SHARE:
            text, summary, facts = _joined_summaries(rng)
            kind = "summaries"
        else:
            text, summary, facts = _document(rng, max_tokens=max_tokens)
            kind = "document"
        yield Example(id=f"{split}-{i:06d}", text=text, summary=summary, key_facts=facts, kind=kind)


def iter_sample(
    count: int = 100, *, long_count: int = 8, max_tokens: int = MAX_DOC_TOKENS
) -> Iterator[Example]:
    """The bundled sample: held-out rows with `long_count` long documents among them.

    The first count - long_count rows of the held-out split (which the demo
    summarizer never trained on), with long documents of 2 to 3 times
    `max_tokens` (drawn from their own seed) at evenly spaced positions: what the
    summarize job must window.
    """
    if not 0 <= long_count <= count:
        raise ValueError(f"long_count {long_count}: expected 0..{count}")
    heldout = iter_examples("heldout", count - long_count, max_tokens=max_tokens)
    rng = random.Random(LONG_SEED)
    long_at = {round((k + 0.5) * count / long_count) for k in range(long_count)} if long_count else set()
    made = 0
    for i in range(count):
        if i in long_at:
            text, summary, facts = _long_document(
                rng, min_tokens=max_tokens * 2, max_tokens=max_tokens * 3
            )
            yield Example(id=f"long-{made:04d}", text=text, summary=summary, key_facts=facts, kind="long")
            made += 1
        else:
            yield next(heldout)


def vocabulary() -> list[str]:
    """Every token a document or summary can hold: the demo tokenizer's word list.

    The templates' own words plus every slot value, lower case (the tokenizer
    lower-cases its input).
    """
    words = set(_TOKEN.findall(QUIET_SUMMARY))
    templates = [*FILLERS, *(t for kind in FACT_KINDS for t in (*kind.documents, kind.summary))]
    for template in templates:
        words.update(_TOKEN.findall(_SLOT.sub(" ", template).lower()))
    for values in SLOTS.values():
        words.update(values)
    return sorted(words)


def write_vocabulary(path: str | Path) -> Path:
    """One token per line: the words_file of the demo summarizer spec's random model."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(vocabulary()) + "\n")
    return target


def _write_jsonl(path: Path, examples: list[Example]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for example in examples:
            fh.write(json.dumps(example.row(), sort_keys=True) + "\n")
    return path


def write_split(path: str | Path, split: str, count: int, *, max_tokens: int = MAX_DOC_TOKENS) -> Path:
    """Write a split as one JSONL file {id, text, summary} in folder `path`."""
    rows = list(iter_examples(split, count, max_tokens=max_tokens))
    return _write_jsonl(Path(path) / "part-00000.jsonl", rows)


def write_sample(folder: str | Path, *, count: int = 100, long_count: int = 8, shards: int = 2) -> list[Path]:
    """The bundled summarization sample (jobs/sample/docs/docs-NN.jsonl), in `shards` files."""
    folder = Path(folder)
    for old in folder.glob("docs-*.jsonl"):
        old.unlink()
    rows = list(iter_sample(count, long_count=long_count))
    per = -(-len(rows) // shards)
    return [
        _write_jsonl(folder / f"docs-{k:02d}.jsonl", rows[k * per : (k + 1) * per]) for k in range(shards)
    ]
