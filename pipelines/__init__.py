"""pipelines: Ray Data generation jobs and Ray Train fine-tuning for combiners."""

from .cli import job_arg_parser
from .readers import ReaderOptions, Shard, list_input_files, plan_shards, read_shard
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

__all__ = [
    "ModelSource",
    "ReaderOptions",
    "Shard",
    "SpecError",
    "StrictModel",
    "deep_merge",
    "job_arg_parser",
    "list_input_files",
    "load_spec",
    "parse_overrides",
    "plan_shards",
    "read_shard",
    "spec_hash",
    "validate_spec",
]
