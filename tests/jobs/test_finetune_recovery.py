"""Fine-tuning survives failures: checkpoints on S3 (moto), a killed driver, a killed worker.

Each run is `python jobs/finetune.py` in its own process session, which starts its
own local Ray; killing that session kills the driver and its cluster, as losing the
head node would. Runs are small (48 rows, 12 steps) and the tests wait on what the
job writes (Ray's checkpoint snapshot, the process exiting), never on a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.finetune import tiny_shapes_spec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _start(spec_file: Path, log: Path, *, fault: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "finetune.py"), "--spec", str(spec_file)],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": "local", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "COMBINER_FAULT": fault},
    )


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session (Ray's GCS, raylet, workers).

    Ray puts workers in process groups of their own, so killpg would miss them.
    """
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait_for(predicate, *, proc: subprocess.Popen, log: Path, what: str) -> object:
    """Poll until `predicate` holds (an event the job writes) or the job exits: no deadline,
    so a loaded machine only makes the test slower, never wrong."""
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"job exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def test_driver_killed_then_restarted_resumes_from_s3_checkpoint(s3_bucket, tmp_path):
    import s3fs

    raw = tiny_shapes_spec(
        tmp_path / "data", name="resume", storage=f"{s3_bucket}/runs", export=str(tmp_path / "export"),
        train_rows=48, epochs=2, eval_every_steps=4,
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    fs = s3fs.S3FileSystem()
    run_root = f"{s3_bucket}/runs/resume".removeprefix("s3://")

    def saved_steps() -> list[int]:
        """Steps of the checkpoints Ray's snapshot records: what a restart can resume from."""
        fs.invalidate_cache()
        try:
            snapshot = json.loads(fs.cat(f"{run_root}/checkpoint_manager_snapshot.json"))
        except FileNotFoundError:
            return []
        return sorted(r["metrics"]["step"] for r in snapshot["checkpoint_results"])

    log1 = tmp_path / "first.log"
    paused = tmp_path / "paused"
    # Rank 0 stops right after reporting the checkpoint of step 4: the kill lands there.
    first = _start(spec_file, log1, fault=f"train_after_checkpoint:4:{paused}")
    _wait_for(paused.exists, proc=first, log=log1, what="the run to pause after its step-4 checkpoint")
    # Ray Train records a reported checkpoint in its snapshot asynchronously: wait for it.
    _wait_for(lambda: 4 in saved_steps(), proc=first, log=log1, what="Ray's snapshot to record step 4")
    _kill_session(first)
    before = saved_steps()  # read after the kill: nothing changes it any more
    assert before and max(before) == 4, f"the first run was killed at step 4, saved steps {before}"

    log2 = tmp_path / "second.log"
    second = _start(spec_file, log2)
    assert second.wait() == 0, log2.read_text()[-4000:]
    summary = json.loads((tmp_path / "export" / "metrics.json").read_text())
    resumed = summary["metrics"]["resumed_from_step"]
    # The restarted run started from the latest checkpoint the killed run had saved.
    assert resumed == max(before) and resumed >= 4, (resumed, before)
    assert f"resuming from step {resumed}" in log2.read_text()
    assert summary["metrics"]["step"] == 12 and summary["finished"]  # 48 rows / batch 8 * 2 epochs
    # num_to_keep=2: Ray's record keeps the two newest. (A checkpoint uploaded in the
    # instant before the kill, never recorded, stays in the bucket as an orphan.)
    assert len(saved_steps()) <= 2


def test_worker_killed_mid_epoch_is_restarted_by_failure_config(tmp_path):
    raw = tiny_shapes_spec(
        tmp_path / "data", name="workerkill", storage=str(tmp_path / "runs"), export=str(tmp_path / "export"),
        train_rows=48, epochs=2, eval_every_steps=4,
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    log = tmp_path / "job.log"
    paused = tmp_path / "paused"
    # The worker stops right after its step-4 checkpoint is reported (once: the restarted
    # worker finds the marker and goes on); the marker holds its pid, which is killed.
    proc = _start(spec_file, log, fault=f"train_after_checkpoint:4:{paused}")
    _wait_for(lambda: paused.exists() and paused.read_text(), proc=proc, log=log, what="the worker to pause")
    snapshot = tmp_path / "runs" / "workerkill" / "checkpoint_manager_snapshot.json"

    def recorded_step_4() -> bool:
        # Ray Train records a reported checkpoint in its snapshot asynchronously.
        try:
            return 4 in [r["metrics"]["step"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
        except (FileNotFoundError, ValueError):
            return False

    _wait_for(recorded_step_4, proc=proc, log=log, what="Ray's snapshot to record step 4")
    pid = int(paused.read_text())
    assert "RayTrainWorker" in _cmdline(pid), _cmdline(pid)
    os.kill(pid, signal.SIGKILL)
    assert proc.wait() == 0, log.read_text()[-4000:]
    text = log.read_text()
    summary = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert summary["metrics"]["step"] == 12 and summary["finished"]
    # The new worker group restored a checkpoint instead of starting over.
    assert summary["metrics"]["resumed_from_step"] is not None and summary["metrics"]["resumed_from_step"] >= 4
    assert "resuming from step" in text
    # A private Ray has no state API: Ray Train's placement-group cleaner, which polls it,
    # is left out (it logged a warning every second of every run).
    assert "Failed to query Ray Train Controller actor state" not in text


def _session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (the driver, Ray's GCS and raylet, its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _cmdline(pid: int) -> str:
    # Ray renames worker processes (setproctitle), e.g. "ray::RayTrainWorker".
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
