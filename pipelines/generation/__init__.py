"""Batch generation on Ray Data (caption_dataset, summarize_corpus) with exactly-once commits."""

from ..uris import absolute_uri
from .commit import (
    ERROR_SCHEMA,
    OUTPUT_SCHEMA,
    CommitError,
    OutputExistsError,
    OutputStore,
    ShardManifest,
    normalize_for_match,
)
from .jobs import print_summary, run_caption_job, run_summarize_job
from .run import JobSummary, ModelSpecError, check_model, run_generation
from .specs import (
    CaptionInput,
    CaptionJobSpec,
    OutputSpec,
    ResourcesSpec,
    SummarizeInput,
    SummarizeJobSpec,
)
from .stages import GenerateWorker, params_hash, preprocess_batch, read_shard_batch, stage_batch

__all__ = [
    "ERROR_SCHEMA",
    "OUTPUT_SCHEMA",
    "CaptionInput",
    "CaptionJobSpec",
    "CommitError",
    "GenerateWorker",
    "JobSummary",
    "ModelSpecError",
    "OutputExistsError",
    "OutputSpec",
    "OutputStore",
    "ResourcesSpec",
    "ShardManifest",
    "SummarizeInput",
    "SummarizeJobSpec",
    "absolute_uri",
    "check_model",
    "normalize_for_match",
    "params_hash",
    "preprocess_batch",
    "print_summary",
    "read_shard_batch",
    "run_caption_job",
    "run_generation",
    "run_summarize_job",
    "stage_batch",
]
