"""Caption images with a combiner on Ray Data; results land as Parquet with an errors table.

    python jobs/caption_dataset.py                                   # the bundled sample, local Ray -> ./outputs/
    python jobs/caption_dataset.py --spec jobs/specs/caption_s3.yaml --set output.mode=resume
    ray job submit --working-dir . -- python jobs/caption_dataset.py --spec jobs/specs/caption_s3.yaml

Without --spec the built-in default captions jobs/sample/*.parquet with
models/demo-captioner into ./outputs/caption_sample (overwritten on each run).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from pipelines import SpecError, job_arg_parser, load_spec  # noqa: E402
from pipelines.generation import (  # noqa: E402
    CaptionJobSpec,
    ModelSpecError,
    OutputExistsError,
    print_summary,
    run_caption_job,
)

# Paths into this checkout are absolute, so the default runs from any folder; the
# output goes to ./outputs/ of the folder it is started from.
DEFAULT_SPEC = {
    "input": {
        "uri": str(REPO / "jobs" / "sample" / "*.parquet"),
        "format": "parquet",
        "image_column": "image",
        "id_column": "id",
        "reference_column": "caption",
    },
    "output": {"uri": "outputs/caption_sample", "mode": "overwrite"},
    "model": {"uri": str(REPO / "models" / "demo-captioner")},
    "generation": {"strategy": "greedy", "max_new_tokens": 12},
    "batch_size": 16,
    "resources": {"workers": 1, "num_gpus": 0, "preprocess_cpus": 1, "worker_cpus": 1},
}


def main(argv: list[str] | None = None) -> int:
    args = job_arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        spec = load_spec(CaptionJobSpec, args.spec, args.overrides, default=DEFAULT_SPEC)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_only:
        print(spec.model_dump_json(indent=2))
        return 0
    try:
        summary = run_caption_job(spec)
    except (OutputExistsError, ModelSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
