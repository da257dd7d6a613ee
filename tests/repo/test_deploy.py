"""deploy/: the KubeRay manifest names a real job script and a spec that validates."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import yaml

from pipelines import load_spec
from pipelines.generation import SummarizeJobSpec

REPO = Path(__file__).resolve().parents[2]


def test_rayjob_entrypoint_runs_a_real_job_with_a_valid_spec() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "rayjob-nightly-summaries.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file() and argv[1] == "jobs/summarize_corpus.py"
    spec_file = argv[argv.index("--spec") + 1]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    job = load_spec(SummarizeJobSpec, REPO / spec_file, overrides)
    assert job.output.mode == "resume" and "{date}" in job.input.uri
    images = {c["image"] for group in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert images == {"rayproject/ray:2.60.0-py311-gpu"}
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert any(p.startswith("torch==") for p in runtime_env["pip"])
    # every dependency of the project but ray (the image's own) is installed on the cluster:
    # a missing one fails the job at import on the workers, not here
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {d for d in project if not d.startswith(("ray[", "torch"))}
    assert wanted == {p for p in runtime_env["pip"] if not p.startswith("torch")}
