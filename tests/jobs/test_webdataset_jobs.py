"""A caption job over WebDataset tar shards (img2dataset's layout) on a real local Ray,
from local files and from the S3 server: the bundled sample's 48 pictures give the same
captions as its Parquet files, bad samples and a tar cut short are error rows naming the
tar and key, each tar is one commit unit, and a resume does no model work."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.support.generation as gs
from pipelines import validate_spec
from pipelines.generation import CaptionJobSpec, run_job
from tests.support.webdataset import tar_bytes, write_tar

REPO = Path(__file__).resolve().parents[2]
CAPTIONER = str(REPO / "models" / "demo-captioner")
pytestmark = pytest.mark.integration


def _sample() -> list[dict]:
    return pa.concat_tables(pq.read_table(p) for p in sorted((REPO / "jobs" / "sample").glob("*.parquet"))).to_pylist()


def _shards(root: str) -> dict[str, str]:
    """Two tars of the bundled sample, a tar with a sample without an image and a corrupt
    image, and a tar cut short; returns key -> caption of every sample with a picture."""
    rows = _sample()
    captions = {}
    for shard, part in enumerate((rows[:24], rows[24:])):
        samples = []
        for i, row in enumerate(part):
            key = f"{shard:05d}{i:04d}"
            samples.append({"__key__": key, "png": row["image"], "txt": row["caption"],
                            "json": {"caption": row["caption"], "sample_id": row["id"]}})
            captions[key] = row["caption"]
        write_tar(f"{root}/{shard:05d}.tar", samples)
    write_tar(f"{root}/00002.tar", [{"__key__": "000020000", "txt": "no picture"},
                                     {"__key__": "000020001", "png": rows[0]["image"][: len(rows[0]["image"]) // 2], "txt": "x"}])
    cut = tar_bytes([{"__key__": f"0000300{i:02d}", "png": rows[i]["image"], "txt": rows[i]["caption"]}
                     for i in range(6)])
    gs.write_bytes(f"{root}/00003.tar", cut[: len(cut) // 2])
    return captions


def _caption(input_uri: str, output_uri: str, mode: str = "error_if_exists"):
    spec = gs.caption_spec(input_uri, output_uri, CAPTIONER, generation={"strategy": "greedy", "max_new_tokens": 12},
                           input={"uri": input_uri, "format": "webdataset", "reference_column": "json.caption"},
                           output={"uri": output_uri, "mode": mode, "max_error_rate": 0.5})
    return run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=None)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_caption_job_reads_webdataset_shards(ray_cluster, tmp_path, s3_bucket, where) -> None:
    root = str(tmp_path / "shards") if where == "local" else f"{s3_bucket}/shards"
    if where == "local":
        Path(root).mkdir()
    captions = _shards(root)
    out = str(tmp_path / "out") if where == "local" else f"{s3_bucket}/out"
    # on S3 the shards are named as webdataset users name them: a brace range
    uri = root if where == "local" else f"{root}/{{00000..00003}}.tar"
    summary = _caption(uri, out)
    ok, errors = gs.read_dir(out), gs.read_errors(out)
    whole = {r["id"] for r in ok.to_pylist()} | {r["id"] for r in errors.to_pylist()}
    # every sample with a picture is in the output, captioned as its reference says
    got = {r["id"]: r for r in ok.to_pylist()}
    assert {k for k in got if k in captions} == set(captions)
    assert all(got[k]["text"] == got[k]["reference"] == captions[k] for k in captions)
    assert summary.metrics["exact_match"] == 1.0
    causes = {r["id"]: (r["stage"], r["cause"]) for r in errors.to_pylist()}
    assert causes["000020000"] == ("read", "missing_image")
    assert causes["000020001"] == ("decode", "corrupt_image")
    assert causes["00003.tar#file"] == ("read", "truncated_file")
    cut = sorted(k for k in whole if k.startswith("0000300"))
    assert cut and cut == [f"0000300{i:02d}" for i in range(len(cut))]  # the samples before the break, then the cut one
    assert summary.rows_in == len(whole) and summary.rows_errored == len(errors)
    assert summary.shards_total == 4  # one commit unit per tar
    again = _caption(uri, out, mode="resume")
    assert again.shards_committed_now == 0 and again.rows_processed_now == 0
