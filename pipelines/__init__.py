"""pipelines: Ray Data generation jobs and Ray Train fine-tuning for combiners."""

from .cli import job_arg_parser
from .readers import ReaderOptions, Shard, list_input_files, plan_shards, read_shard
from .session import init_ray, worker_env
from .specs import (
    ModelSource,
    SpecError,
    StrictModel,
    deep_merge,
    load_spec,
    parse_overrides,
    spec_hash,
    validate_spec,
)
from .uris import absolute_uri, is_remote

__all__ = [
    "ModelSource",
    "ReaderOptions",
    "Shard",
    "SpecError",
    "StrictModel",
    "absolute_uri",
    "deep_merge",
    "init_ray",
    "is_remote",
    "job_arg_parser",
    "list_input_files",
    "load_spec",
    "parse_overrides",
    "plan_shards",
    "read_shard",
    "spec_hash",
    "validate_spec",
    "worker_env",
]
