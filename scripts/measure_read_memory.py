"""Peak memory of a read task on a ~1 GB Parquet file of large images.

    python scripts/measure_read_memory.py                  # make the file once, then measure
    PYTHONPATH=/path/to/other/checkout python scripts/measure_read_memory.py   # another version

The file: 256 random-noise JPEGs of 2400x1800 (about 4 MB each, 1 GB in all) in row
groups of 12 rows (about 47 MB), written by pyarrow, under --data (made once, reused).
Each measurement runs in a fresh Python process with the code on PYTHONPATH (this
checkout by default) and reports ru_maxrss at the end minus the process's resident
memory (VmRSS) just before the read, after its imports and, for the read stage, after
the model's image processor is loaded (the peak is reset there: Linux only):

    stage read_and_preprocess  the generation jobs' CPU stage (stages.read_and_preprocess)
                               on one read group, the job's default batch_size (256), the
                               demo captioner's image processor; every chunk consumed
    stage read                 the reader alone (read_shard, or iter_shard where it exists)
    shard first                the first shard the job plans for the file (a whole file
                               before files were split; a range of row groups since)
    shard whole                the whole file as one shard, in every version

The last line printed is JSON with every figure, in MiB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_ROWS, _ROW_GROUP, _SIZE = 256, 12, (2400, 1800)


def make_file(path: Path) -> None:
    """The input: random-noise JPEGs (they do not compress), written once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("id", pa.string()), ("image", pa.binary())]),
                          use_dictionary=["id"]) as writer:
        for start in range(0, _ROWS, _ROW_GROUP):
            images = []
            for _ in range(start, min(_ROWS, start + _ROW_GROUP)):
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (_SIZE[1], _SIZE[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, "JPEG", quality=90)
                images.append(buf.getvalue())
            ids = [f"img{i:04d}" for i in range(start, start + len(images))]
            writer.write_table(pa.table({"id": ids, "image": images}), row_group_size=_ROW_GROUP)
    tmp.rename(path)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(data: Path, stage: str, which: str) -> dict:
    """One measurement, in this process (run it in a fresh one)."""
    import gc

    import numpy as np

    from pipelines import validate_spec
    from pipelines.generation import CaptionJobSpec, build_plan
    from pipelines.generation.stages import read_and_preprocess, read_groups
    from pipelines.generation.tasks.base import cached_preprocessor
    from pipelines.reading import Shard, list_inputs, plan_shards, read_shard

    spec = {"input": {"uri": str(data.parent), "format": "parquet", "input_column": "image", "id_column": "id"},
            "output": {"uri": str(data.parent / "out-unused")}, "model": {"uri": str(REPO / "models" / "demo-captioner")}}
    plan = build_plan(validate_spec(CaptionJobSpec, spec, source="measure"))
    listing = list_inputs(str(data), format="parquet")
    if which == "whole":
        shard = Shard(files=(str(data),), nbytes=listing.sizes[str(data)])
    else:
        extra = {"shard_bytes": plan.shard_bytes} if hasattr(plan, "shard_bytes") else {}
        shard = plan_shards(listing.files, format="parquet", sizes=listing.sizes, **extra)[0]
    if stage == "read_and_preprocess":
        cached_preprocessor(plan.model.uri, plan.model.trust_remote_code)  # part of the baseline
    gc.collect()
    # Imports (torch, transformers) peak above the resident memory they leave: the peak is
    # reset to the current resident memory (Linux's clear_refs "5"), so ru_maxrss after
    # the read is the read's own peak.
    peak_before = _peak_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_mib()
    rows = 0
    if stage == "read_and_preprocess":
        for chunk in read_and_preprocess({"shards": np.array(read_groups([shard], {}), dtype=object)}, plan=plan):
            rows += len(chunk["id"])
    else:
        try:
            from pipelines.reading import iter_shard
        except ImportError:  # before streaming: the shard whole
            rows = read_shard(shard, plan.reader).num_rows
        else:
            rows = sum(t.num_rows for t in iter_shard(shard, plan.reader))
    peak = _peak_mib()
    return {"stage": stage, "shard": which, "rows": rows, "shard_mib": round(shard.nbytes / 2**20, 1),
            "baseline_rss_mib": round(base, 1), "import_peak_mib": round(peak_before, 1),
            "ru_maxrss_mib": round(peak, 1), "peak_minus_baseline_mib": round(peak - base, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/combiner-read-mem/images.parquet"))
    parser.add_argument("--stage", choices=["read_and_preprocess", "read"], action="append")
    parser.add_argument("--shard", choices=["first", "whole"], action="append")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.data, args.stage[0], args.shard[0])))
        return
    make_file(args.data)
    code = os.environ.get("PYTHONPATH", str(REPO)).split(os.pathsep)[0]
    results = []
    for stage in args.stage or ["read_and_preprocess", "read"]:
        for which in args.shard or ["first", "whole"]:
            env = dict(os.environ, PYTHONPATH=code)
            run = subprocess.run([sys.executable, __file__, "--child", "--data", str(args.data), "--stage", stage,
                                  "--shard", which], env=env, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                sys.exit(f"measurement {stage}/{which} failed:\n{run.stderr[-3000:]}")
            result = json.loads(run.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{stage:20} {which:6} {result['rows']:4d} rows of {result['shard_mib']:7.1f} MiB: "
                  f"peak {result['ru_maxrss_mib']:7.1f} MiB - baseline {result['baseline_rss_mib']:6.1f} MiB "
                  f"= {result['peak_minus_baseline_mib']:7.1f} MiB", flush=True)
    print(json.dumps({"code": code, "file_mib": round(args.data.stat().st_size / 2**20, 1), "results": results}))


if __name__ == "__main__":
    main()
