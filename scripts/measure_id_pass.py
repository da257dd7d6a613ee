"""Driver memory and time of the duplicate-id pass (find_duplicates) on synthetic ids.

    PYTHONPATH=. python scripts/measure_id_pass.py --rows 10000000 --files 1000
    PYTHONPATH=/path/to/old/checkout python scripts/measure_id_pass.py ...   # before

Ids are 'img-%09d' of the row number, spread over --files id tables (what read_shard_ids
gives for one file each); a --dup-share of the rows take the id of a random other row
instead. Tables are made as they are read (a reader's memory is not the pass's), the
same every time, so the pass may read them twice. Runs whichever find_duplicates the
PYTHONPATH holds: a function of a ReadIds (now) or of an iterable of tables (before).

Prints one JSON line: seconds (the pass, making the tables included unless --premade) and
make_s (making them alone, once), peak RSS above the RSS before the pass (ru_maxrss, so run each
measurement in a fresh process), with --tracemalloc the peak of Python objects and
numpy arrays (tracemalloc; it slows Python code down, so its run is not timed), Arrow's
own peak allocation, and a digest of the result to compare two versions' answers.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import resource
import time
import tracemalloc
from collections.abc import Collection, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.reading import find_duplicates


def uri(f: int) -> str:
    return f"s3://bucket/ids/part-{f:05d}.parquet"


def id_table(f: int, *, rows: int, files: int, dup_share: float, seed: int) -> pa.Table:
    """File f's ids: rows [f*per, (f+1)*per) of `rows`, some taking another row's id."""
    per = rows // files
    rng = np.random.default_rng([seed, f])
    numbers = np.arange(f * per, (f + 1) * per, dtype=np.int64)
    repeat = rng.random(per) < dup_share
    numbers[repeat] = rng.integers(0, per * files, int(repeat.sum()))
    ids = pc.binary_join_element_wise("img-", pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), 9, "0"), "")
    return pa.table({"id": ids, "source_uri": pa.array([uri(f)] * per),
                     "source_row": pa.array(np.arange(per, dtype=np.int64))})


def tables(args: argparse.Namespace, only: Collection[tuple[int, str]] | None = None) -> Iterator[tuple[int, pa.Table]]:
    for f in range(args.files):
        if only is None or (1, uri(f)) in only:
            yield 1, id_table(f, rows=args.rows, files=args.files, dup_share=args.dup_share, seed=args.seed)


def run_pass(args: argparse.Namespace, made: list[tuple[int, pa.Table]] | None = None) -> dict:
    """find_duplicates over the tables, made as they are read or, given `made`, made before."""
    if "hash_fn" in inspect.signature(find_duplicates).parameters:  # reads twice: give it a ReadIds
        if made is not None:
            return find_duplicates(lambda only: [(r, t) for r, t in made if only is None or (r, uri_of(t)) in only])
        return find_duplicates(lambda only: tables(args, only))
    return find_duplicates(made if made is not None else tables(args))


def uri_of(table: pa.Table) -> str:
    return table.column("source_uri")[0].as_py()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10**7)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--dup-share", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracemalloc", action="store_true", help="measure the Python + numpy peak (slower; untimed)")
    ap.add_argument("--skip-make", action="store_true", help="do not time making the tables alone")
    ap.add_argument("--premade", action="store_true",
                    help="make every table before the pass (in memory, not counted): times the pass alone")
    args = ap.parse_args()

    # A small pass first, so that modules imported on first use are not counted below.
    run_pass(argparse.Namespace(**{**vars(args), "rows": 2000, "files": 2}))
    make_s = None
    if not args.skip_make:
        t = time.perf_counter()
        for _ in tables(args):
            pass
        make_s = time.perf_counter() - t
    made = list(tables(args)) if args.premade else None
    pool = pa.default_memory_pool()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    arrow_before = pool.max_memory() or 0
    if args.tracemalloc:
        tracemalloc.start()
    t = time.perf_counter()
    found = run_pass(args, made)
    seconds = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = args.rows // args.files * args.files
    digest = hashlib.sha256(json.dumps(sorted((u, r, w) for (u, r), w in found.items())).encode()).hexdigest()[:16]
    out = {
        "rows": rows, "files": args.files, "premade": args.premade, "duplicates": len(found), "digest": digest,
        "seconds": None if args.tracemalloc else round(seconds, 2),
        "make_s": None if make_s is None else round(make_s, 2),
        "rss_delta_bytes": rss_peak - rss_before, "rss_bytes_per_row": round((rss_peak - rss_before) / rows, 1),
        "tracemalloc_peak_bytes": traced,
        "tracemalloc_bytes_per_row": None if traced is None else round(traced / rows, 1),
        "arrow_peak_bytes": (pool.max_memory() or 0) if (pool.max_memory() or 0) > arrow_before else arrow_before,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
