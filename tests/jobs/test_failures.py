"""Jobs that meet failures on a real local Ray: a row the model cannot process costs that
row only, a run where too many rows failed is not a success (exit 3, no _SUCCESS), resume
after a crash stays exactly once with failing rows, and a spec problem exits 2 having
written nothing."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import tests.support.generation as gs
from combiner_core import GenerationParams, generate_images, load_combiner
from pipelines import validate_spec
from pipelines.generation import CaptionJobSpec, SummarizeJobSpec, run_job
from tests.support.finetune import tiny_shapes_spec

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def caption(spec: dict):
    return run_job(validate_spec(CaptionJobSpec, spec, source="test"), ray_init=None)


def _images(folder: Path, n: int) -> set[str]:
    for i in range(n):
        gs.write_bytes(str(folder / f"{i:02d}.png"), gs.image_bytes(i))
    return {f"{i:02d}.png" for i in range(n)}


def _job(script: str, args: list[str], env: dict[str, str] | None = None,
         cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], cwd=cwd,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=600)


def test_a_row_the_model_cannot_process_costs_only_that_row(ray_cluster, models, tmp_path, monkeypatch):
    """The model stage raises for two chosen rows wherever they are batched: halves are
    retried until each fails alone; exactly those two go to _errors (stage model), every
    other row is written with the output it gets without failures."""
    ids = _images(tmp_path / "in", 12)
    out = tmp_path / "out"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), models["captioner"])
    spec["output"]["max_error_rate"] = 0.2  # 2 of 12 may fail
    monkeypatch.setenv("COMBINER_FAULT", "model_rows:03.png,07.png")
    summary = caption(spec)
    ok, bad = gs.assert_exactly_once(str(out), ids)
    errors = {r["id"]: r for r in bad.to_pylist()}
    assert sorted(errors) == ["03.png", "07.png"]
    assert {(r["stage"], r["cause"]) for r in errors.values()} == {("model", "model_error")}
    assert "InjectedFault: injected model failure for row(s) ['03.png']" in errors["03.png"]["message"]
    combiner = load_combiner(models["captioner"])
    params = GenerationParams(**spec["generation"])
    for row in ok.to_pylist():
        data = (tmp_path / "in" / row["id"]).read_bytes()
        assert row["text"] == generate_images(combiner, [data], params)[0][0].text, row["id"]
    assert (summary.rows_in, summary.rows_ok, summary.rows_errored) == (12, 10, 2)
    # the example is the first failed row of whichever shard committed first (any order)
    assert summary.error_causes["model_error"]["rows"] == 2 and list(summary.error_causes) == ["model_error"]
    assert summary.error_causes["model_error"]["example"] in {e["message"] for e in errors.values()}
    assert not summary.failed and (out / "_SUCCESS").exists()


def test_too_many_failed_rows_exit_3_without_success_and_say_why(ray_cluster, models, tmp_path):
    """2 of 12 rows fail (17% > the default max_error_rate 0.1): what succeeded is
    committed, no _SUCCESS, exit 3, and the console names the cause with an example."""
    ids = _images(tmp_path / "in", 12)
    out = tmp_path / "out"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), models["captioner"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = _job("caption_dataset.py", ["--spec", str(tmp_path / "spec.yaml")],
               env={"RAY_ADDRESS": ray_cluster, "COMBINER_FAULT": "model_rows:03.png,07.png"})
    assert run.returncode == 3, run.stderr[-3000:]
    assert "errors by cause (2 rows, 16.7%" in run.stdout
    # the example names its row, so a person knows which file to look at
    assert re.search(r"model_error: 2 row\(s\), e.g. row (03|07)\.png: InjectedFault: injected model failure", run.stdout)
    assert "FAILED: 16.7% of rows failed, more than output.max_error_rate=0.1" in run.stdout
    gs.assert_exactly_once(str(out), ids)
    summary = gs.read_summary(str(out))
    assert summary["failed"] and summary["rows_ok"] == 10 and not (out / "_SUCCESS").exists()


def test_a_run_where_every_row_failed_fails_whatever_the_rate(ray_cluster, models, tmp_path):
    """Parquet whose image column holds no images: every row errors. Even with
    max_error_rate 1.0 that is a failure; the counts are per row, not per file."""
    rows = [{"id": f"r{i}", "image": f"not an image {i}".encode()} for i in range(30)]
    gs.write_parquet(str(tmp_path / "in" / "a.parquet"), rows)
    spec = gs.caption_spec(str(tmp_path / "in"), str(tmp_path / "out"), models["captioner"],
                           input={"uri": str(tmp_path / "in"), "format": "parquet", "input_column": "image",
                                  "id_column": "id"})
    spec["output"]["max_error_rate"] = 1.0
    summary = caption(spec)
    assert (summary.rows_in, summary.rows_errored) == (30, 30) and summary.failed
    assert list(summary.error_causes) == ["unknown_format"] and summary.error_causes["unknown_format"]["rows"] == 30
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_resume_after_a_crash_with_failing_rows_gives_each_row_once(ray_cluster, models, tmp_path):
    ids = _images(tmp_path / "in", 16)
    out = tmp_path / "out"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), models["captioner"])
    spec["output"].update(mode="resume", max_error_rate=0.25)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    failing = "model_rows:02.png,09.png,13.png"
    run1 = _job("caption_dataset.py", ["--spec", str(tmp_path / "spec.yaml")],
                env={"RAY_ADDRESS": ray_cluster, "COMBINER_FAULT": f"{failing};driver_after_commit:1"})
    assert run1.returncode == -9, run1.stderr[-3000:]  # SIGKILLed right after its first commit
    assert len(list((out / "_commits").glob("*.json"))) == 1 and not (out / "_SUCCESS").exists()
    run2 = _job("caption_dataset.py", ["--spec", str(tmp_path / "spec.yaml")],
                env={"RAY_ADDRESS": ray_cluster, "COMBINER_FAULT": failing})
    assert run2.returncode == 0, run2.stderr[-3000:]
    ok, bad = gs.assert_exactly_once(str(out), ids)
    assert sorted(bad.column("id").to_pylist()) == ["02.png", "09.png", "13.png"]
    summary = gs.read_summary(str(out))
    assert summary["shards_committed_before"] == 1 and summary["rows_processed_now"] == 12
    assert (out / "_SUCCESS").exists()


def test_ctrl_c_stops_the_job_in_one_line_and_a_resume_finishes_it_exactly_once(ray_cluster, models, tmp_path):
    """SIGINT (Ctrl-C, or a scheduler's stop) mid-run: exit 130 with one line saying what
    is kept and how to go on, no traceback; the rerun with output.mode=resume processes
    every row once."""
    import signal
    import time

    ids = _images(tmp_path / "in", 12)
    out, marker = tmp_path / "out", tmp_path / "mid-run"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), models["captioner"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = subprocess.Popen([sys.executable, str(REPO / "jobs" / "caption_dataset.py"), "--spec", str(tmp_path / "spec.yaml")],
                           cwd=REPO, env=dict(os.environ, RAY_ADDRESS=ray_cluster,
                                              COMBINER_FAULT=f"worker_wait:1:{marker}"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           # A suite started in the background by a script (`make test &`)
                           # ignores SIGINT (bash does that to background commands), and a
                           # child inherits it, so Python installs no KeyboardInterrupt
                           # handler; a user's shell gives the job the default, as here.
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not marker.exists() and run.poll() is None:  # the model actor is holding its first batch
        time.sleep(0.05)
    assert run.poll() is None, run.communicate()[1][-3000:]
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=300)
    (marker.parent / (marker.name + ".go")).write_text("go")
    assert run.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"interrupted: the shards committed so far are kept in {out}; run the same command with --set " \
           "output.mode=resume" in stderr
    assert not (out / "_SUCCESS").exists()
    resumed = _job("caption_dataset.py", ["--spec", str(tmp_path / "spec.yaml"), "--set", "output.mode=resume"],
                   env={"RAY_ADDRESS": ray_cluster})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    gs.assert_exactly_once(str(out), ids)
    assert (out / "_SUCCESS").exists()


def test_photos_with_no_generation_block_caption_within_the_decoders_positions(ray_cluster, tmp_path):
    """The demo captioner (16 decoder positions) on photo-size JPEGs with the default
    max_new_tokens (64): lowered to 16 on the driver; every row is captioned."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(1600, 1200), (4000, 3000), (640, 480), (1200, 1600)]):
        noise = Image.fromarray((rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)).resize((w, h))
        buf = io.BytesIO()
        noise.save(buf, "JPEG", quality=85)
        gs.write_bytes(str(tmp_path / "photos" / f"p{i}.jpg"), buf.getvalue())
    spec = {"input": {"uri": str(tmp_path / "photos"), "format": "images"},
            "output": {"uri": str(tmp_path / "out")}, "model": {"uri": str(REPO / "models" / "demo-captioner")},
            "resources": {"preprocess_cpus": 0.5, "worker_cpus": 0.5}}
    summary = caption(spec)
    assert (summary.rows_ok, summary.rows_errored) == (4, 0)
    assert max(r["output_tokens"] for r in gs.read_dir(str(tmp_path / "out")).to_pylist()) <= 16


def test_spec_problems_exit_2_with_one_message_and_nothing_written(tmp_path):
    """No Ray here: a typo in model.uri and a user's folder as output.uri are found before
    Ray starts; the user's files stay."""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    run = _job("caption_dataset.py", ["--set", "model.uri=models/demo-captionr", "--set", f"output.uri={users}",
                                      "--set", "output.mode=overwrite"])
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "cannot run the built-in default spec with --set model.uri=models/demo-captionr" in run.stderr
    assert "; nothing was written (2 problem(s))" in run.stderr
    assert f"did you mean {REPO / 'models' / 'demo-captioner'}?" in run.stderr
    assert f"output.uri: {users} holds 1 file(s) this job did not write (notes.txt)" in run.stderr
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]


def test_print_spec_is_the_whole_spec_as_commented_yaml_and_runs_back():
    run = _job("caption_dataset.py", ["--print-spec", "--set", "generation.strategy=beam"])
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout
    assert "# the share of rows that may go to _errors before the run counts as failed" in text
    assert "  max_new_tokens: 12" in text and "  strategy: beam" in text and "(default: 0.1)" in text
    data = yaml.safe_load(text)
    # the keys the built-in default sets are written; the others are commented at their defaults
    assert set(data) == set(CaptionJobSpec.model_fields) - {"batch_size"} and "\n# batch_size: 256\n" in text
    assert validate_spec(CaptionJobSpec, data, source="printed").generation.strategy == "beam"
    finetune = _job("finetune.py", ["--print-spec"])
    assert finetune.returncode == 0 and "checkpoint: null   # or a mapping with these keys:" in finetune.stdout
    assert "    # uri: null" in finetune.stdout
    help_text = _job("label_dataset.py", ["--help"]).stdout
    assert "--print-spec" in help_text and "exit codes: 0 done; 1 the job stopped" in help_text
    assert "relative to that file's folder" in help_text


def test_a_model_that_will_not_load_stops_the_job_in_one_line_and_blocks_nothing(ray_cluster, models, tmp_path):
    """Weights changed after saving (one flipped byte: only the actor's sha256 check sees
    it): exit 1 with the cause in one line; the rerun with the good model starts in the
    default mode, since nothing was committed."""
    import shutil

    ids = _images(tmp_path / "in", 4)
    flipped = tmp_path / "flipped"
    shutil.copytree(models["captioner"], flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-100] ^= 1
    (flipped / "model.safetensors").write_bytes(bytes(data))
    out = tmp_path / "out"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), str(flipped))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = _job("caption_dataset.py", ["--spec", str(tmp_path / "spec.yaml")], env={"RAY_ADDRESS": ray_cluster})
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"error: the job stopped: ManifestMismatchError: {flipped} does not match its combiner_manifest.json")
    spec["model"]["uri"] = models["captioner"]
    caption(spec)
    gs.assert_exactly_once(str(out), ids)


def test_input_files_that_hold_no_rows_are_no_success(ray_cluster, models, tmp_path):
    """Only empty and blank JSONL files (a partition whose upload failed): 0 rows, which
    is no success; no _SUCCESS, and the summary says so."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b"")
    (tmp_path / "in" / "b.jsonl").write_bytes(b"\n  \n")
    spec = gs.summarize_spec(str(tmp_path / "in"), str(tmp_path / "out"), models["summarizer"])
    summary = run_job(validate_spec(SummarizeJobSpec, spec, source="test"), ray_init=None)
    assert (summary.rows_in, summary.files_in, summary.failed) == (0, 2, True)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    from pipelines.generation import format_summary

    assert "FAILED: the 2 input file(s) hold no rows" in format_summary(summary)


def test_workers_that_would_hold_every_cpu_exit_2_instead_of_waiting_forever(tmp_path):
    """Model actors or training workers holding all of a private Ray's CPUs leave none for
    Ray Data's read tasks: before the check, the caption job sat after its plan line and
    the fine-tune in Ray Data's split coordinator, forever. Now both stop before Ray
    starts, naming the keys and the fix; nothing is written."""
    from ray._private.utils import get_num_cpus  # the count a private Ray takes here

    cpus = int(get_num_cpus())
    env = {"RAY_ADDRESS": ""}  # the private Ray of a laptop run
    out = tmp_path / "out"
    run = _job("caption_dataset.py", ["--set", f"resources.workers={cpus}", "--set", f"output.uri={out}"], env=env)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert (f"resources.workers: {cpus} worker(s) x resources.worker_cpus=1 hold {cpus} CPU(s) for the whole run, and "
            f"each read task needs resources.preprocess_cpus=1 more: {cpus + 1} CPUs, but this machine") in run.stderr
    assert "the job would wait forever" in run.stderr and "or run on a larger cluster (RAY_ADDRESS)" in run.stderr
    assert not out.exists()
    # A spec of its own: the demo spec's data exists only after make_demo_data (CI's clean
    # clone has none), and a missing split would be listed beside the CPU problem.
    spec_file = tmp_path / "tune.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_shapes_spec(
        tmp_path / "data", name="cpus", storage=str(tmp_path / "runs"), export=str(tmp_path / "export"), workers=cpus)))
    tune = _job("finetune.py", ["--spec", str(spec_file)], env=env)
    assert tune.returncode == 2, tune.stdout[-2000:] + tune.stderr[-2000:]
    assert "Traceback" not in tune.stderr
    assert "nothing was written (1 problem(s))" in tune.stderr
    assert f"scaling.num_workers: {cpus} worker(s) x scaling.cpus_per_worker=1 hold {cpus} CPU(s)" in tune.stderr
    assert "each read task needs 1 (Ray Data's default) more" in tune.stderr
    assert not (tmp_path / "export").exists() and not (tmp_path / "runs").exists()
    # Preflight lists it with every other problem, so one run names them all.
    gone = _job("finetune.py", ["--spec", str(spec_file), "--set", f"data.eval.uri={tmp_path / 'nowhere'}"], env=env)
    assert gone.returncode == 2 and "(2 problem(s))" in gone.stderr, gone.stderr[-2000:]
    assert "data.eval" in gone.stderr and "scaling.num_workers:" in gone.stderr


def test_cpu_demand_names_the_fix_that_fits():
    from pipelines.session import CpuDemand

    d = CpuDemand(workers=4, cpus_per_worker=2, reader_cpus=1, workers_key="resources.workers",
                  cpus_key="resources.worker_cpus", reader_key="resources.preprocess_cpus")
    assert d.problem(9, "here") is None  # 4 x 2 + 1 fits exactly
    msg = d.problem(8, "the cluster")
    assert "9 CPUs, but the cluster has 8. No read task would ever start" in msg
    assert "Set resources.workers=3 or resources.worker_cpus=1.7" in msg  # 3 x 2 + 1 = 7; 4 x 1.7 + 1 = 7.8
    one = CpuDemand(workers=1, cpus_per_worker=1, reader_cpus=1, workers_key="w", cpus_key="c", reader_key="r")
    assert one.problem(2, "here") is None
    assert "Set c=0.5, or" in one.problem(1.5, "here")
    assert "Set c=0.5 and r=0.5, or" in one.problem(1, "here")  # nothing is left beside the reader: share


def test_on_a_running_cluster_a_cpu_shortfall_is_a_warning(ray_cluster, caplog):
    """A cluster may grow (its autoscaler adds nodes), so the check only warns there."""
    import logging

    from pipelines.session import CpuDemand, check_private_cpus, warn_cluster_cpus

    d = CpuDemand(workers=2, cpus_per_worker=1, reader_cpus=1, workers_key="resources.workers",
                  cpus_key="resources.worker_cpus", reader_key="resources.preprocess_cpus")
    check_private_cpus(d)  # Ray is running in this process: nothing to refuse before it starts
    with caplog.at_level(logging.WARNING, logger="pipelines.session"):
        warn_cluster_cpus(d)  # the module's Ray has 2 CPUs
    assert ("3 CPUs, but the cluster now has 2. No read task can start until the autoscaler adds nodes "
            "(without one, the job waits forever). Set resources.workers=1 or resources.worker_cpus=0.5") in caplog.text
    caplog.clear()
    warn_cluster_cpus(CpuDemand(workers=1, cpus_per_worker=1, reader_cpus=1, workers_key="w", cpus_key="c"))
    assert caplog.text == ""
