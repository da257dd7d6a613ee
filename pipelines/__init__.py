"""pipelines: Ray Data generation jobs and Ray Train fine-tuning for combiners."""

from .cli import job_arg_parser
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
    "SpecError",
    "StrictModel",
    "deep_merge",
    "job_arg_parser",
    "load_spec",
    "parse_overrides",
    "spec_hash",
    "validate_spec",
]
