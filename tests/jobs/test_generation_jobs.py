"""caption_dataset and summarize_corpus end to end on a real local Ray, with local and
s3:// (moto server) inputs; outputs read back as a plain directory and compared row by
row with combiner_core run directly. Also bad inputs, reruns, and killed workers/drivers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import tests.support.generation as gs
from combiner_core import generate_images, generate_texts, load_combiner
from pipelines import validate_spec
from pipelines.generation import (
    CaptionJobSpec,
    PreflightError,
    SummarizeJobSpec,
    run_job,
)
from pipelines.metrics import normalize_for_match

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def caption(spec: dict, **kw):
    return run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=None, **kw)


def summarize(spec: dict, **kw):
    return run_job(validate_spec(SummarizeJobSpec, spec, source="test"), ray_init=None, **kw)


def _check_against_core(table, expected: dict[str, list]) -> None:
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == set(expected)
    for rid, cands in expected.items():
        row = rows[rid]
        assert row["text"] == cands[0].text, rid
        assert row["score"] == pytest.approx(cands[0].score, abs=1e-4), rid
        assert row["texts"] == [c.text for c in cands]
        assert row["output_tokens"] == cands[0].num_tokens


def test_caption_image_folder_local_matches_core(ray_cluster, models, tmp_path):
    src = tmp_path / "images"
    images = {}
    for i, (fmt, ext) in enumerate(
        [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")] * 2
    ):
        name = f"sub{i % 2}/img{i:02d}.{ext}"
        data = gs.image_bytes(i, fmt)
        gs.write_bytes(str(src / name), data)
        images[name] = data
    gs.write_bytes(str(src / "notes.txt"), b"not an input")
    out = str(tmp_path / "out")
    summary = caption(gs.caption_spec(str(src), out, models["captioner"]))

    assert summary.files_ignored == 1 and summary.shards_committed_now == 3  # 10 files / 4 per shard
    ok, bad = gs.assert_exactly_once(out, set(images))
    assert bad.num_rows == 0
    combiner = load_combiner(models["captioner"])
    params = CaptionJobSpec.model_validate(gs.caption_spec("x", "y", "z")).generation
    _check_against_core(ok, {k: generate_images(combiner, [v], params)[0] for k, v in images.items()})
    row = ok.to_pylist()[0]
    assert row["model_uri"] == models["captioner"] and row["model_sha256"] == combiner.weights_sha256
    assert len(row["spec_hash"]) == 64 and len(row["params_hash"]) == 64 and row["produced_at"] is not None
    assert row["source_uri"].startswith(str(src)) and row["source_row"] == 0


def test_caption_parquet_on_s3_matches_core(ray_cluster, models, s3_bucket):
    model_uri = gs.save(gs.captioner(), f"{s3_bucket}/models/captioner")
    rows = [
        {"key": f"k{i}", "img": {"bytes": gs.image_bytes(i), "path": None}, "cap": f"cap {i}"}
        for i in range(9)
    ]
    # The model's own caption for k0 as its reference: one exact match to count.
    combiner = load_combiner(models["captioner"])
    params = CaptionJobSpec.model_validate(
        gs.caption_spec("x", "y", "z", generation={"strategy": "beam", "num_beams": 2,
                                                   "num_return_sequences": 2, "max_new_tokens": 5})
    ).generation
    expected = {r["key"]: generate_images(combiner, [r["img"]["bytes"]], params)[0] for r in rows}
    rows[0]["cap"] = "  " + expected["k0"][0].text.upper() + " "
    gs.write_parquet(f"{s3_bucket}/in/part-0.parquet", rows[:5])
    gs.write_parquet(f"{s3_bucket}/in/part-1.parquet", rows[5:])
    out = f"{s3_bucket}/captions/"
    spec = gs.caption_spec(
        f"{s3_bucket}/in/", out, model_uri,
        input={"uri": f"{s3_bucket}/in/", "format": "parquet", "input_column": "img",
               "id_column": "key", "reference_column": "cap"},
        generation=params.model_dump(),
    )
    summary = caption(spec)
    ok, _ = gs.assert_exactly_once(out, {r["key"] for r in rows})
    _check_against_core(ok, expected)
    refs = dict(zip(ok.column("id").to_pylist(), ok.column("reference").to_pylist(), strict=True))
    assert refs["k3"] == "cap 3"
    matches = sum(normalize_for_match(r["text"]) == normalize_for_match(r["reference"]) for r in ok.to_pylist())
    assert matches >= 1 and summary.metrics["reference_rows"] == 9
    assert summary.metrics["exact_match"] == pytest.approx(matches / 9, abs=1e-4)
    assert gs.read_summary(out)["metrics"]["exact_match"] == summary.metrics["exact_match"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_summarize_jsonl_date_partition_matches_core(ray_cluster, models, tmp_path, s3_bucket, where):
    base = str(tmp_path) if where == "local" else s3_bucket
    docs = {f"d{i}": gs.document(i) for i in range(10)}
    items = list(docs.items())
    for k in range(3):
        gs.write_jsonl(
            f"{base}/corpus/date=2026-01-31/shard-{k}.jsonl",
            [{"doc_id": d, "text": t, "ref": t} for d, t in items[k::3]],
        )
    spec = gs.summarize_spec(
        f"{base}/corpus/date={{date}}/", f"{base}/summaries/date={{date}}", models["summarizer"],
        input={"uri": f"{base}/corpus/date={{date}}/", "format": "jsonl", "id_column": "doc_id",
               "reference_column": "ref"},
        date="2026-01-31",
    )
    summary = summarize(spec)
    out = f"{base}/summaries/date=2026-01-31"
    assert summary.output_uri.rstrip("/").endswith("summaries/date=2026-01-31")
    ok, _ = gs.assert_exactly_once(out, set(docs))
    combiner = load_combiner(models["summarizer"])
    params = SummarizeJobSpec.model_validate(spec).generation
    _check_against_core(ok, {d: generate_texts(combiner, [t], params)[0] for d, t in docs.items()})
    by_id = {r["id"]: r for r in ok.to_pylist()}
    assert by_id["d3"]["input_tokens"] == len(combiner.tokenizer(docs["d3"])["input_ids"])
    assert by_id["d3"]["reference"] == docs["d3"] and by_id["d3"]["truncated"] is False


def test_caption_bad_inputs_go_to_errors(ray_cluster, models, tmp_path):
    good = [gs.image_bytes(i) for i in range(4)]
    corrupt = gs.image_bytes(9)[: len(gs.image_bytes(9)) // 2]  # a PNG cut inside its pixel data
    rows = [
        {"id": "good0", "image": good[0]},
        {"id": "corrupt", "image": corrupt},
        {"id": "zero", "image": b""},
        {"id": "text", "image": b"hello, I am not an image"},
        {"id": "null", "image": None},
        {"id": "good1", "image": good[1]},
    ]
    gs.write_parquet(str(tmp_path / "in/mixed.parquet"), rows)
    gs.write_bytes(str(tmp_path / "in/not-parquet.parquet"), b"PAR1 garbage")
    out = str(tmp_path / "out")
    spec = gs.caption_spec(
        str(tmp_path / "in"), out, models["captioner"],
        input={"uri": str(tmp_path / "in"), "format": "parquet", "id_column": "id"},
    )
    summary = caption(spec)
    expected_ids = {r["id"] for r in rows} | {"not-parquet.parquet#file"}
    ok, bad = gs.assert_exactly_once(out, expected_ids)
    assert sorted(ok.column("id").to_pylist()) == ["good0", "good1"]
    errors = {r["id"]: r for r in bad.to_pylist()}
    assert errors["corrupt"]["cause"] == "corrupt_image" and errors["corrupt"]["stage"] == "decode"
    assert errors["zero"]["cause"] == "empty_image" and "zero bytes" in errors["zero"]["message"]
    assert errors["null"]["cause"] == "null_value" and errors["null"]["stage"] == "read"
    assert errors["text"]["cause"] == "unknown_format" and "not an image" in errors["text"]["message"]
    assert errors["not-parquet.parquet#file"]["stage"] == "read"
    assert "not-parquet.parquet" in errors["not-parquet.parquet#file"]["message"]
    assert errors["corrupt"]["source_uri"].endswith("mixed.parquet") and errors["corrupt"]["source_row"] == 1
    assert summary.rows_in == 7 and summary.rows_ok == 2 and summary.rows_errored == 5


def test_summarize_bad_texts_go_to_errors(ray_cluster, models, tmp_path):
    long_doc = " ".join(["the red circle"] * 40)  # 120 words > the tiny model's 64 tokens
    rows = [
        {"id": "ok", "text": b"a red circle on the left"},
        {"id": "empty", "text": b""},
        {"id": "blank", "text": b"  \n\t "},
        {"id": "latin1", "text": "caf\xe9 on the mat".encode("latin-1")},
        {"id": "long", "text": long_doc.encode()},
    ]
    gs.write_parquet(str(tmp_path / "in/docs.parquet"), rows)
    out = str(tmp_path / "out")
    spec = gs.summarize_spec(
        str(tmp_path / "in"), out, models["summarizer"],
        input={"uri": str(tmp_path / "in"), "format": "parquet", "id_column": "id"}, long_documents="reject",
    )
    summarize(spec)
    ok, bad = gs.assert_exactly_once(out, {r["id"] for r in rows})
    assert ok.column("id").to_pylist() == ["ok"]
    causes = {r["id"]: (r["stage"], r["cause"]) for r in bad.to_pylist()}
    assert causes == {
        "empty": ("tokenize", "empty_text"),
        "blank": ("tokenize", "empty_text"),
        "latin1": ("tokenize", "not_utf8"),
        "long": ("tokenize", "too_long"),
    }
    messages = {r["id"]: r["message"] for r in bad.to_pylist()}
    assert "UTF-8" in messages["latin1"] and "truncation" in messages["long"]


def test_summarize_plain_text_ids_and_bad_json(ray_cluster, models, tmp_path):
    gs.write_bytes(str(tmp_path / "lines/a.txt"), b"the cat sat\n\nthe dog sat on the mat\n")
    gs.write_bytes(str(tmp_path / "files/one.txt"), b"a red square")
    gs.write_bytes(str(tmp_path / "files/two.txt"), b"\xff\xfe")
    out1, out2 = str(tmp_path / "o1"), str(tmp_path / "o2")
    summarize(gs.summarize_spec(str(tmp_path / "lines"), out1, models["summarizer"],
                                input={"uri": str(tmp_path / "lines"), "format": "text_lines"}))
    ok, bad = gs.assert_exactly_once(out1, {"a.txt#0", "a.txt#2"})
    assert bad.num_rows == 0  # the blank line (a paragraph break) holds no document; ids are line numbers
    summarize(gs.summarize_spec(str(tmp_path / "files"), out2, models["summarizer"],
                                input={"uri": str(tmp_path / "files"), "format": "text_files"}))
    ok, bad = gs.assert_exactly_once(out2, {"one.txt", "two.txt"})
    assert bad.to_pylist()[0]["cause"] == "not_utf8"
    # a JSONL line that is not JSON is one error row; the file's other lines go on
    gs.write_bytes(str(tmp_path / "j/x.jsonl"), b'{"text": "a cat"}\n{broken\n{"text": "a dog"}\n')
    out3 = str(tmp_path / "o3")
    summarize(gs.summarize_spec(str(tmp_path / "j"), out3, models["summarizer"],
                                input={"uri": str(tmp_path / "j"), "format": "jsonl"}))
    ok, bad = gs.assert_exactly_once(out3, {"x.jsonl#0", "x.jsonl#1", "x.jsonl#2"})
    assert bad.to_pylist()[0]["cause"] == "bad_json"


def test_rerun_of_finished_job_does_no_model_work(ray_cluster, models, tmp_path):
    src = tmp_path / "in"
    for i in range(5):
        gs.write_bytes(str(src / f"{i}.png"), gs.image_bytes(i))
    out = str(tmp_path / "out")
    spec = gs.caption_spec(str(src), out, models["captioner"])
    first = caption(spec)
    assert first.shards_committed_now == 2
    with pytest.raises(PreflightError, match="output.mode=resume"):
        caption(spec)
    spec["output"]["mode"] = "resume"
    calls = []
    again = run_job(
        validate_spec(CaptionJobSpec, spec, source="test"), ray_init=lambda: calls.append(1)
    )
    assert calls == [] and again.shards_committed_now == 0 and again.rows_processed_now == 0
    assert again.rows_in == 5 and again.shards_committed_before == 2
    gs.assert_exactly_once(out, {f"{i}.png" for i in range(5)})
    spec["generation"]["max_new_tokens"] = 3
    spec["input"]["files_per_shard"] = 2
    # the refusal names what differs from the run that wrote the output
    with pytest.raises(PreflightError, match=r"other inputs, model or generation parameters \(fingerprint \w+ != "
                                             r"\w+\): generation.max_new_tokens 6 -> 3, input.files_per_shard 4 -> 2; "
                                             r"resuming would mix results"):
        caption(spec)


def test_worker_process_killed_mid_job_completes_exactly_once(ray_cluster, models, tmp_path, monkeypatch):
    src = tmp_path / "in"
    for i in range(12):
        gs.write_bytes(str(src / f"{i:02d}.png"), gs.image_bytes(i))
    marker = tmp_path / "killed"
    # The generation actor SIGKILLs its own process on its 2nd batch (once); Ray restarts
    # the actor and Ray Data retries the batch.
    monkeypatch.setenv("COMBINER_FAULT", f"worker_batch:2:{marker}")
    out = str(tmp_path / "out")
    summary = caption(gs.caption_spec(str(src), out, models["captioner"]))
    assert marker.exists(), "the fault did not fire: no worker was killed"
    gs.assert_exactly_once(out, {f"{i:02d}.png" for i in range(12)})
    assert summary.rows_processed_now == 12


def _run_driver(
    spec: dict, spec_path: Path, gcs: str, fault: str, script: str = "caption_dataset.py"
) -> subprocess.CompletedProcess:
    spec_path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, RAY_ADDRESS=gcs, COMBINER_FAULT=fault)
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), "--spec", str(spec_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_driver_killed_mid_job_then_resume_exactly_once(ray_cluster, models, tmp_path):
    src = tmp_path / "in"
    ids = set()
    for i in range(16):
        gs.write_bytes(str(src / f"{i:02d}.png"), gs.image_bytes(i))
        ids.add(f"{i:02d}.png")
    out = tmp_path / "out"
    spec = gs.caption_spec(str(src), str(out), models["captioner"])
    spec["output"]["mode"] = "resume"
    # Run 1: the driver is SIGKILLed right after its first commit.
    run1 = _run_driver(spec, tmp_path / "spec.yaml", ray_cluster, "driver_after_commit:1")
    assert run1.returncode == -9, run1.stderr[-3000:]
    assert len(list((out / "_commits").glob("*.json"))) == 1
    assert (out / "_lease.json").exists()  # left by the killed driver: it must not block the resume
    assert not (out / "_SUCCESS").exists()  # a killed run never claims completion
    # Run 2 (resume): killed in the middle of its first commit, data file in place, no manifest.
    run2 = _run_driver(spec, tmp_path / "spec.yaml", ray_cluster, "driver_before_manifest:1")
    assert run2.returncode == -9, run2.stderr[-3000:]
    assert len(list((out / "_commits").glob("*.json"))) == 1
    assert len(list(out.glob("part-*.parquet"))) == 2  # one committed, one orphan a plain reader sees
    # Run 3 (resume, in-process): cleans the orphan, does only the 3 uncommitted shards.
    summary = caption(spec)
    assert summary.shards_committed_before == 1 and summary.shards_committed_now == 3
    assert summary.rows_processed_now == 12  # 16 rows - the 4 of the shard committed by run 1
    gs.assert_exactly_once(str(out), ids)
    assert (out / "_SUCCESS").exists() and (out / "_SUCCESS").read_bytes() == b""


def test_wrong_model_fails_on_the_driver_before_ray(models, tmp_path):
    """No ray_cluster fixture: the check runs before any Ray work (ray_init would be called)."""
    src = tmp_path / "in"
    gs.write_bytes(str(src / "0.png"), gs.image_bytes(0))
    started = []
    spec = gs.caption_spec(str(src), str(tmp_path / "out"), models["summarizer"])
    with pytest.raises(PreflightError, match=r"is a text combiner \(encoder-decoder\), but caption needs an image combiner"):
        run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=lambda: started.append(1))
    # overwrite mode: an earlier output survives a run that fails on its model.
    from pipelines.generation.output import OutputStore

    OutputStore(str(tmp_path / "out2")).prepare(mode="overwrite", fingerprint="earlier")  # its _job.json
    (tmp_path / "out2" / f"part-{'0' * 20}.parquet").write_bytes(b"previous results")
    before = sorted(p.name for p in (tmp_path / "out2").iterdir())
    spec = gs.caption_spec(str(src), str(tmp_path / "out2"), str(tmp_path / "no-model"))
    spec["output"]["mode"] = "overwrite"
    with pytest.raises(PreflightError, match="no checkpoint at .*no-model"):
        run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=lambda: started.append(1))
    assert started == [] and sorted(p.name for p in (tmp_path / "out2").iterdir()) == before


def test_cpu_stage_stays_apart_from_model_actors(ray_cluster, models, tmp_path):
    """Decoding and tokenizing run as CPU tasks, never fused into the model actors, even
    when both reserve the same CPUs (Ray Data fuses operators with equal requests)."""
    import contextlib
    import io

    from pipelines.generation import build_plan
    from pipelines.generation.stages import build_dataset
    from pipelines.reading import Shard

    spec = gs.caption_spec(str(tmp_path), str(tmp_path / "out"), models["captioner"])
    spec["resources"].update(preprocess_cpus=1, worker_cpus=1)
    plan = build_plan(validate_spec(CaptionJobSpec, spec, source="test"))
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        build_dataset(plan, [Shard(files=(str(tmp_path / "a.png"),))], run_id="r").explain()
    physical = shown.getvalue().split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(ModelWorker)]" in physical, physical
    assert "TaskPoolMapOperator[MapBatches(read_and_preprocess)]" in physical, physical
    assert "ActorPoolMapOperator[MapBatches(Stager)]" in physical, physical


def test_read_task_yields_whole_batches_across_small_shards(models, tmp_path):
    """A read task over a group of small shards yields batch_size rows at a time, a batch
    spanning shards, every row once and in order, a bad row carried as an error row."""
    import json

    from pipelines.generation import build_plan
    from pipelines.generation.stages import read_and_preprocess, read_groups
    from pipelines.reading import list_inputs, plan_shards

    for f in range(3):
        rows = [{"image": gs.image_bytes(5 * f + r), "id": f"f{f}r{r}"} for r in range(5)]
        if f == 1:
            rows[2]["image"] = b"not an image"
        gs.write_parquet(str(tmp_path / "in" / f"{f}.parquet"), rows)
    spec = gs.caption_spec(str(tmp_path / "in"), str(tmp_path / "out"), models["captioner"],
                           input={"uri": str(tmp_path / "in"), "format": "parquet", "input_column": "image",
                                  "id_column": "id"})
    plan = build_plan(validate_spec(CaptionJobSpec, spec, source="test"))
    listing = list_inputs(plan.reader.root, format="parquet")
    shards = plan_shards(listing.files, format="parquet", sizes=listing.sizes)
    groups = read_groups(shards, {})
    assert len(groups) == 1 and plan.batch_size == 4
    chunks = list(read_and_preprocess({"shards": np.array(groups, dtype=object)}, plan=plan))
    assert [len(c["id"]) for c in chunks] == [4, 4, 4, 3]
    assert [i for c in chunks for i in c["id"]] == [f"f{f}r{r}" for f in range(3) for r in range(5)]
    assert list(chunks[1]["shard_key"]) == [shards[0].key] + [shards[1].key] * 3
    causes = {i: c for ch in chunks for i, c in zip(ch["id"], ch["error_cause"], strict=True) if c}
    assert list(causes) == ["f1r2"]
    assert all(c["pixel_values"].shape[0] == len(c["id"]) for c in chunks)
    assert json.loads(groups[0])[0]["shard"]["key"] == shards[0].key


def test_resume_after_out_of_order_commits_keeps_the_first_row(models, tmp_path):
    """Shards commit in any order: a committed later file whose row went to _errors as a
    duplicate of a row in a file not committed yet must not claim the id on resume."""
    from pipelines.generation import build_plan
    from pipelines.reading import duplicate_rows, plan_shards

    src = tmp_path / "docs"
    gs.write_jsonl(str(src / "a.jsonl"), [{"id": "d1", "text": "x"}, {"id": "d2", "text": "y"},
                                          {"id": "d1", "text": "z"}])
    gs.write_jsonl(str(src / "b.jsonl"), [{"id": "d2", "text": "w"}, {"id": "d4", "text": "v"}])
    spec = gs.summarize_spec(str(src), str(tmp_path / "out"), models["summarizer"],
                             input={"uri": str(src), "id_column": "id"})
    plan = build_plan(validate_spec(SummarizeJobSpec, spec, source="test"))
    a, b = plan_shards([str(src / "a.jsonl"), str(src / "b.jsonl")], format="jsonl")
    # b.jsonl was committed first, its row 0 (d2) in _errors as a duplicate of a.jsonl row 1
    found = duplicate_rows(plan.reader, done=[b], todo=[a], committed_duplicates=lambda: {(str(src / "b.jsonl"), 0)})
    assert [(row, why.split(" first")[0]) for _, row, why in found[a.key]] == [(2, "id 'd1'")]
    # had the committed duplicate claimed d2, a.jsonl's first d2 would be lost
    found = duplicate_rows(plan.reader, done=[b], todo=[a], committed_duplicates=lambda: set())
    assert sorted(row for _, row, _ in found[a.key]) == [1, 2]


def test_duplicate_ids_keep_the_first_row_and_resume_exactly_once(ray_cluster, models, tmp_path):
    """The same id twice in one file and again in a later file: the first row (file, then
    row order) is output, each later one goes to _errors as duplicate_id naming the
    first; a driver killed after its first commit resumes to the same result."""
    src = tmp_path / "docs"
    gs.write_jsonl(str(src / "a.jsonl"), [{"id": "d1", "text": gs.document(1)}, {"id": "d2", "text": gs.document(2)},
                                          {"id": "d1", "text": gs.document(3)}, {"id": "d3", "text": gs.document(4)}])
    gs.write_jsonl(str(src / "b.jsonl"), [{"id": "d2", "text": gs.document(5)}, {"id": "d4", "text": gs.document(6)}])
    out = tmp_path / "out"
    spec = gs.summarize_spec(str(src), str(out), models["summarizer"], input={"uri": str(src), "id_column": "id"})
    spec["output"]["mode"] = "resume"
    run1 = _run_driver(spec, tmp_path / "spec.yaml", ray_cluster, "driver_after_commit:1", "summarize_corpus.py")
    assert run1.returncode == -9, run1.stderr[-3000:]
    summary = summarize(spec)
    assert summary.shards_committed_before == 1 and summary.shards_committed_now == 1
    ok, bad = gs.read_dir(str(out)), gs.read_errors(str(out))
    assert sorted(ok.column("id").to_pylist()) == ["d1", "d2", "d3", "d4"]
    rows = {(r["source_uri"].rsplit("/", 1)[-1], r["source_row"]): r for r in bad.to_pylist()}
    assert set(rows) == {("a.jsonl", 2), ("b.jsonl", 0)}
    assert {r["cause"] for r in rows.values()} == {"duplicate_id"}
    assert "a.jsonl row 0" in rows[("a.jsonl", 2)]["message"] and "a.jsonl row 1" in rows[("b.jsonl", 0)]["message"]
    first = {r["id"]: r["source_row"] for r in ok.to_pylist() if r["source_uri"].endswith("a.jsonl")}
    assert first == {"d1": 0, "d2": 1, "d3": 3}
    assert (summary.rows_in, summary.rows_ok, summary.rows_errored) == (6, 4, 2)


def test_second_driver_is_refused_while_the_first_finishes_exactly_once(ray_cluster, models, tmp_path):
    """One writer per output: a second driver (any mode, overwrite too) is refused with the
    owner's run id, and the running job still finishes with every row exactly once."""
    import json as _json

    from pipelines.generation import OutputLeasedError

    src = tmp_path / "in"
    for i in range(8):
        gs.write_bytes(str(src / f"{i}.png"), gs.image_bytes(i))
    out = tmp_path / "out"
    spec = gs.caption_spec(str(src), str(out), models["captioner"])
    marker = tmp_path / "waiting"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, COMBINER_FAULT=f"worker_wait:1:{marker}")
    first = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "caption_dataset.py"), "--spec", str(tmp_path / "spec.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        while not marker.exists():  # the first job's actor is mid-batch, holding the lease
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        owner = _json.loads((out / "_lease.json").read_text())["run_id"]
        for mode in ("overwrite", "resume", "error_if_exists"):
            with pytest.raises(PreflightError, match=f"being written by run {owner}"):
                caption({**spec, "output": {"uri": str(out), "mode": mode}})
        # Past preflight (two drivers that checked at once), taking the lease is refused too.
        from pipelines.generation import build_plan, run_plan

        plan = build_plan(validate_spec(CaptionJobSpec, {**spec, "output": {"uri": str(out), "mode": "resume"}},
                                        source="test"))
        with pytest.raises(OutputLeasedError, match=f"being written by run {owner}"):
            run_plan(plan, ray_init=None)
        assert first.poll() is None
    finally:
        Path(str(marker) + ".go").write_text("go")
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    gs.assert_exactly_once(str(out), {f"{i}.png" for i in range(8)})
    assert not (out / "_lease.json").exists()


def test_caption_gallery_is_escaped_self_contained_and_lists_errors(ray_cluster, models, tmp_path):
    rows = [{"key": f"k{i}", "img": gs.image_bytes(i), "cap": f"cap {i}"} for i in range(3)]
    rows[1]["cap"] = "<script>alert(1)</script> & more"
    rows.append({"key": "broken", "img": b"not an image", "cap": "x"})
    gs.write_parquet(str(tmp_path / "in" / "part-0.parquet"), rows)
    out = tmp_path / "out"
    spec = gs.caption_spec(
        str(tmp_path / "in"), str(out), models["captioner"],
        input={"uri": str(tmp_path / "in"), "format": "parquet", "input_column": "img", "id_column": "key",
               "reference_column": "cap"},
        output={"uri": str(out), "gallery_rows": 2},
    )
    summary = caption(spec)
    page = (out / "_gallery.html").read_text()
    assert summary.gallery_uri == str(out / "_gallery.html")
    assert page.count('<div class="card">') == 2  # capped at gallery_rows outputs
    assert page.count('<div class="card err">') == 1 and "unknown_format" in page and "broken" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    # Self-contained: every picture is inline, nothing is fetched from elsewhere.
    assert page.count('<img src="data:image/png;base64,') == 2 and "http" not in page.replace("http-equiv", "")
    assert "✗ differs" in page or "✓ match" in page
    # A plain-directory reader still reads the output: the page's "_" keeps it out.
    gs.assert_exactly_once(str(out), {"k0", "k1", "k2", "broken"})


def test_nightly_partition_rerun_processes_only_late_files_and_scores_rouge(ray_cluster, models, tmp_path):
    """A date partition rerun with output.mode=resume after new files landed does only them;
    references give ROUGE in _summary.json equal to the rouge-score package's."""
    from rouge_score import rouge_scorer

    from pipelines.metrics import split_sentences

    part = tmp_path / "corpus" / "date=2026-01-31"
    docs = [{"id": f"d{i}", "text": gs.document(i), "summary": gs.document(i + 1)} for i in range(6)]
    gs.write_jsonl(str(part / "a.jsonl"), docs[:4])
    out = tmp_path / "summaries" / "date={date}"
    spec = gs.summarize_spec(
        str(tmp_path / "corpus" / "date={date}"), str(out), models["summarizer"],
        input={"uri": str(tmp_path / "corpus" / "date={date}"), "id_column": "id", "reference_column": "summary"},
        date="2026-01-31",
    )
    spec["output"]["mode"] = "resume"
    first = summarize(spec)
    written = tmp_path / "summaries" / "date=2026-01-31"
    assert first.rows_processed_now == 4 and (written / "_SUCCESS").exists()
    gs.write_jsonl(str(part / "b.jsonl"), docs[4:])  # landed late
    again = summarize(spec)
    assert again.rows_processed_now == 2 and again.shards_committed_before == 1 and again.shards_committed_now == 1
    ok, _ = gs.assert_exactly_once(str(written), {d["id"] for d in docs})
    assert (written / "_SUCCESS").exists()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    rows = ok.to_pylist()
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r["reference"], r["text"])[key].fmeasure for r in rows) / len(rows)
        assert again.metrics[key] == pytest.approx(expected, abs=1e-4), key
    lsum = sum(scorer.score("\n".join(split_sentences(r["reference"])), "\n".join(split_sentences(r["text"])))
               ["rougeLsum"].fmeasure for r in rows) / len(rows)
    assert again.metrics["rougeLsum"] == pytest.approx(lsum, abs=1e-4)
    assert all(r["chunks"] == 1 for r in rows)  # short documents: one window each


def test_bare_summarize_corpus_runs_the_bundled_sample(ray_cluster, tmp_path, monkeypatch, capsys):
    """`python jobs/summarize_corpus.py` with no spec (fast variant: four of the bundled
    documents, two of them longer than the summarizer's limit): summaries beside their
    references with ROUGE, the long ones windowed."""
    import importlib.util
    import json as _json

    docs = [_json.loads(line) for f in sorted((REPO / "jobs" / "sample" / "docs").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    subset = [d for d in docs if d["id"].startswith("long-")][:2] + [d for d in docs if not d["id"].startswith("long-")][:2]
    gs.write_jsonl(str(tmp_path / "docs" / "part-0.jsonl"), subset)
    loader = importlib.util.spec_from_file_location("summarize_corpus", REPO / "jobs" / "summarize_corpus.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    monkeypatch.chdir(tmp_path)
    assert module.main(["--set", f"input.uri={tmp_path / 'docs'}"]) == 0
    printed = capsys.readouterr().out
    assert "ROUGE vs reference (F1): ROUGE-1" in printed and "(reference: " in printed
    ok = gs.read_dir(str(tmp_path / "outputs" / "summarize_sample")).to_pylist()
    chunks = {r["id"]: r["chunks"] for r in ok}
    assert {k: v > 1 for k, v in chunks.items()} == {d["id"]: d["id"].startswith("long-") for d in subset}
    summary = gs.read_summary(str(tmp_path / "outputs" / "summarize_sample"))
    assert summary["metrics"]["rougeL"] > 0.5 and (tmp_path / "outputs" / "summarize_sample" / "_SUCCESS").exists()
