"""Label a dataset with a combiner: each row gets one label of a fixed set, by the model's scores.

    python jobs/label_dataset.py                                     # the bundled sample, local Ray -> ./outputs/
    python jobs/label_dataset.py --spec my_labels.yaml --set output.mode=resume
    ray job submit --working-dir . -- python jobs/label_dataset.py --spec my_labels.yaml

Without --spec the built-in default labels the 48 pictures of jobs/sample/ by shape
(circle, square, triangle) with models/demo-captioner: a shape's verbalizations are
every caption the captioner could write for it (40 each), so its probability is the
sum over them. It prints accuracy against the sample's true shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from jobs._generation_main import generation_main  # noqa: E402
from pipelines.demo_data.shapes import SHAPES, captions_of  # noqa: E402
from pipelines.generation import LabelJobSpec  # noqa: E402

# Paths into this checkout are absolute, so the default runs from any folder; the
# output goes to ./outputs/ of the folder it is started from.
DEFAULT_SPEC = {
    "input": {
        "uri": str(REPO / "jobs" / "sample" / "*.parquet"),
        "format": "parquet",
        "input_column": "image",
        "id_column": "id",
        "reference_column": "shape",
    },
    "output": {"uri": "outputs/label_sample", "mode": "overwrite", "gallery_rows": 48},
    "model": {"uri": str(REPO / "models" / "demo-captioner")},
    "labels": {shape: captions_of(shape) for shape in SHAPES},
}


def main(argv: list[str] | None = None) -> int:
    return generation_main(LabelJobSpec, __doc__.splitlines()[0], argv, default=DEFAULT_SPEC)


if __name__ == "__main__":
    sys.exit(main())
