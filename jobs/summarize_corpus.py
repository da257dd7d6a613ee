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

from pipelines import SpecError, job_arg_parser, load_spec  # noqa: E402
from pipelines.generation import (  # noqa: E402
    ModelSpecError,
    OutputExistsError,
    SummarizeJobSpec,
    print_summary,
    run_summarize_job,
)


def main(argv: list[str] | None = None) -> int:
    args = job_arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        spec = load_spec(SummarizeJobSpec, args.spec, args.overrides).with_date()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_only:
        print(spec.model_dump_json(indent=2))
        return 0
    try:
        summary = run_summarize_job(spec)
    except (OutputExistsError, ModelSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
