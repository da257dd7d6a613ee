"""Write the synthetic shapes captioning set (train / eval / held-out Parquet splits).

    python jobs/make_demo_data.py [--out data/shapes] [--train 3000] [--eval 300] [--heldout 500]

Each row is {id, image (PNG bytes), caption}; the same arguments always write the
same bytes. jobs/specs/finetune_demo_captioner.yaml trains on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.finetune.shapes import write_split, write_vocabulary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/shapes", help="output folder (one sub-folder per split)")
    parser.add_argument("--train", type=int, default=6000, help="training rows")
    parser.add_argument("--eval", type=int, default=300, help="evaluation rows")
    parser.add_argument("--heldout", type=int, default=500, help="held-out rows, scored once after training")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for split, count in (("train", args.train), ("eval", args.eval), ("heldout", args.heldout)):
        files = write_split(out / split, split, count)
        print(f"{split}: {count} rows in {len(files)} file(s) under {out / split}")
    print(f"vocabulary: {write_vocabulary(out / 'vocab.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
