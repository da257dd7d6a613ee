"""Summarize a corpus with a text combiner on Ray Data; nightly runs land in a date partition.

    python jobs/summarize_corpus.py                                  # the bundled sample, local Ray -> ./outputs/
    python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml
    python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml --set date=2026-01-31 --set output.mode=resume
    ray job submit --working-dir . -- python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml

Without --spec the built-in default summarizes jobs/sample/docs/ (about 100 documents,
a few longer than the encoder's limit) with models/demo-summarizer into
./outputs/summarize_sample and prints the first summaries beside their references
with ROUGE. {date} in input.uri / output.uri is today's UTC date unless `date` is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from jobs._generation_main import generation_main  # noqa: E402
from pipelines.generation import SummarizeJobSpec  # noqa: E402

# Paths into this checkout are absolute, so the default runs from any folder; the
# output goes to ./outputs/ of the folder it is started from.
DEFAULT_SPEC = {
    "input": {
        "uri": str(REPO / "jobs" / "sample" / "docs"),
        "format": "jsonl",
        "input_column": "text",
        "id_column": "id",
        "reference_column": "summary",
    },
    "output": {"uri": "outputs/summarize_sample", "mode": "overwrite"},
    "model": {"uri": str(REPO / "models" / "demo-summarizer")},
    "generation": {"strategy": "greedy", "max_new_tokens": 48},
    "long_documents": "chunk",
}


def main(argv: list[str] | None = None) -> int:
    return generation_main(SummarizeJobSpec, __doc__.splitlines()[0], argv, default=DEFAULT_SPEC)


if __name__ == "__main__":
    sys.exit(main())
