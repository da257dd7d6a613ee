"""The README's first command, submitted to a real Ray head with token auth via `ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tests.support.generation as gs

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` with RAY_AUTH_MODE=token, on free ports; stopped by SIGINT."""
    env = dict(os.environ, RAY_AUTH_MODE="token")
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    dashboard = _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard,
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--ray-client-server-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    cmd = [RAY, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    cmd += [f"{k}={v}" for k, v in ports.items()]
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")  # noqa: SIM115
    # SIGINT's default restored: a suite started in the background by a script ignores it, and children inherit that.
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while time.time() < deadline:
        probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, f"ray start exited: see {log.name}"
        time.sleep(2)
    else:
        head.send_signal(signal.SIGINT)
        pytest.fail(f"the Ray head did not answer within 180 s ({log.name})")
    yield address, env
    head.send_signal(signal.SIGINT)  # --block shuts its processes down on exit
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    log.close()


def test_ray_job_submit_caption_dataset_with_token_auth(ray_head, tmp_path):
    address, env = ray_head
    # Without the token the head refuses the submission: auth is really on.
    no_token = dict(env, RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing-token"), HOME=str(tmp_path))
    refused = subprocess.run([RAY, "job", "list", "--address", address], env=no_token,
                             capture_output=True, text=True)
    assert refused.returncode != 0
    out = tmp_path / "captions"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "COMBINER_CACHE_DIR": str(tmp_path / "cache")}}
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env),
         "--", sys.executable, str(REPO / "jobs" / "caption_dataset.py"),
         "--set", f"output.uri={out}", "--set", "output.mode=error_if_exists"],
        env=env, capture_output=True, text=True, timeout=480,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout
    summary_line = next(line for line in result.stdout.splitlines() if line.startswith("SUMMARY "))
    summary = json.loads(summary_line[len("SUMMARY "):])
    assert "[caption] 2 input file(s)" in result.stdout  # the job's own log line reached the client
    sample_ids = set()
    for shard in sorted((REPO / "jobs" / "sample").glob("*.parquet")):
        sample_ids |= set(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
    ok, _ = gs.assert_exactly_once(str(out), sample_ids)
    assert summary["rows_in"] == len(sample_ids) and summary["metrics"]["exact_match"] is not None
    assert "exact match vs reference" in result.stdout
    assert set(ok.column("reference").to_pylist()) <= set(
        t for shard in (REPO / "jobs" / "sample").glob("*.parquet")
        for t in pq.read_table(shard, columns=["caption"]).column("caption").to_pylist()
    )
