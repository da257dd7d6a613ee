"""pipelines: Ray Data generation jobs and Ray Train fine-tuning for combiners.

Job specs are pydantic models loaded from YAML with `load_spec` (one SpecError lists
every problem with its key); `pipelines.generation` runs generation jobs,
`pipelines.finetune` fine-tunes. Inputs share one vocabulary (`InputSource`).
"""

from .cli import job_arg_parser
from .errors import JobError
from .preflight import Preflight, PreflightError
from .reading import InputSource
from .session import init_ray, shape_blocks
from .specs import (
    ModelSource,
    SpecError,
    StrictModel,
    absolute_spec_paths,
    load_spec,
    parse_overrides,
    path_field,
    resolve_spec_paths,
    spec_hash,
    spec_yaml,
    validate_spec,
)

__all__ = [
    "absolute_spec_paths",
    "InputSource",
    "JobError",
    "ModelSource",
    "Preflight",
    "PreflightError",
    "SpecError",
    "StrictModel",
    "init_ray",
    "shape_blocks",
    "job_arg_parser",
    "load_spec",
    "parse_overrides",
    "path_field",
    "resolve_spec_paths",
    "spec_hash",
    "spec_yaml",
    "validate_spec",
]
