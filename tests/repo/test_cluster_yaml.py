"""cluster.yaml passes Ray's own cluster-launcher validation and says what docs/cluster.md says."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(config):
    prepared = prepare_config(copy.deepcopy(config))  # merges Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError when invalid
    assert prepared["provider"]["type"] == "aws"


def test_validation_rejects_a_broken_copy(config):
    # The check above can fail: an unknown key is refused by Ray's schema.
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(broken))


def test_cpu_head_autoscaling_gpu_workers_current_image(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU instance
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 2
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "ray-ml" not in image and image.endswith("-gpu")
    assert image.split(":")[1].startswith(ray.__version__)  # the image's Ray matches ours
    assert any("pip install" in c and "combiner" in c for c in config["setup_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"][1:])
