"""Summarize a corpus with a text combiner on Ray Data; nightly runs land in a date partition.

    python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml
    python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml --set date=2026-01-31 --set output.mode=resume
    ray job submit --working-dir . -- python jobs/summarize_corpus.py --spec jobs/specs/summarize_nightly.yaml

{date} in input.uri / output.uri is today's UTC date unless `date` is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from jobs._generation_main import generation_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return generation_main("SummarizeJobSpec", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
