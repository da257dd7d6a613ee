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

from jobs._generation_main import generation_main  # noqa: E402
from pipelines.generation import CaptionJobSpec  # noqa: E402

# Paths into this checkout are absolute, so the default runs from any folder; the
# output goes to ./outputs/ of the folder it is started from.
DEFAULT_SPEC = {
    "input": {
        "uri": str(REPO / "jobs" / "sample" / "*.parquet"),
        "format": "parquet",
        "input_column": "image",
        "id_column": "id",
        "reference_column": "caption",
    },
    "output": {"uri": "outputs/caption_sample", "mode": "overwrite", "gallery_rows": 48},
    "model": {"uri": str(REPO / "models" / "demo-captioner")},
    "generation": {"strategy": "greedy", "max_new_tokens": 12},
    "resources": {"workers": 1, "num_gpus": 0, "preprocess_cpus": 1, "worker_cpus": 1},
}


def main(argv: list[str] | None = None) -> int:
    return generation_main(CaptionJobSpec, __doc__.splitlines()[0], argv, default=DEFAULT_SPEC)


if __name__ == "__main__":
    sys.exit(main())
