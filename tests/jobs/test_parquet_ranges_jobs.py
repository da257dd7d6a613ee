"""A large Parquet file as several shards on a real local Ray: read by several tasks,
committed range by range, and resumed exactly once after the driver is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import tests.support.generation as gs
from pipelines import validate_spec
from pipelines.generation import CaptionJobSpec, run_job

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _run_driver(spec: dict, spec_path: Path, gcs: str, fault: str) -> subprocess.CompletedProcess:
    spec_path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, RAY_ADDRESS=gcs, COMBINER_FAULT=fault)
    return subprocess.run([sys.executable, str(REPO / "jobs" / "caption_dataset.py"), "--spec", str(spec_path)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_parquet_file_in_ranges_resumes_exactly_once_after_the_driver_is_killed(
    ray_cluster, models, tmp_path, s3_bucket, where
):
    """40 rows in 20 row groups, one range each (input.shard_mib tiny): 20 shards, read
    by two tasks (16 shards per read group), from a local folder or the S3 server. The
    driver SIGKILLs itself right after its first commit; the rerun commits the 19 other
    ranges only, and every id is in the output or _errors exactly once, at its row of the file."""
    import fsspec

    ids = {f"p{i:02d}" for i in range(40)}
    rows = [{"key": f"p{i:02d}", "image": gs.image_bytes(i) if i != 13 else b"not an image"} for i in range(40)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "big.parquet", row_group_size=2)
    source = str(tmp_path / "in")
    if where == "s3":
        source = f"{s3_bucket}/in"
        with fsspec.open(f"{source}/big.parquet", "wb") as f:
            f.write((tmp_path / "in" / "big.parquet").read_bytes())
    out = tmp_path / "out"
    spec = gs.caption_spec(source, str(out), models["captioner"], input={
        "uri": source, "format": "parquet", "input_column": "image", "id_column": "key",
        "shard_mib": 1e-6})
    spec["output"]["mode"] = "resume"
    run1 = _run_driver(spec, tmp_path / "spec.yaml", ray_cluster, "driver_after_commit:1")
    assert run1.returncode == -9, run1.stderr[-3000:]  # SIGKILLed right after its first commit
    (first,) = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    assert first["rows_in"] == 2 and first["row_groups"][1] == first["row_groups"][0] + 1
    assert first["row_groups"][2] == 20 and not (out / "_SUCCESS").exists()

    summary = run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=None)
    assert (summary.shards_committed_before, summary.shards_committed_now) == (1, 19)
    assert summary.rows_processed_now == 38 and summary.files_in == 1
    ok, bad = gs.assert_exactly_once(str(out), ids)
    assert {r["id"]: r["source_row"] for r in ok.to_pylist() + bad.to_pylist()} == {
        f"p{i:02d}": i for i in range(40)}
    assert bad.column("id").to_pylist() == ["p13"]
    manifests = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    assert sorted(m["row_groups"][0] for m in manifests) == list(range(20))
    assert len({m["shard_key"] for m in manifests}) == 20
    assert (out / "_SUCCESS").exists()
    # A rerun of the finished job does no model work.
    again = run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=None)
    assert again.shards_committed_now == 0 and again.rows_processed_now == 0
