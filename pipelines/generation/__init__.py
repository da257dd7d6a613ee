"""The generation pipeline on Ray Data: one stage builder for every task kind
(caption_dataset, summarize_corpus, label_dataset), exactly-once commits, Parquet outputs.

    spec = load_spec(CaptionJobSpec, "my.yaml")      # pipelines.load_spec
    summary = run_job(spec)                           # build_plan(spec) + run_plan(plan)
    print(format_summary(summary))

A task kind is one adapter (tasks/) plus its spec (specs.py).
"""

from ..preflight import PreflightError
from .output import CommitError, LeaseLostError, OutputExistsError, OutputLeasedError
from .plan import JobPlan, build_plan
from .preflight import Preflight, preflight
from .report import format_summary
from .run import JobStoppedError, run_job, run_plan
from .specs import CaptionJobSpec, JobSpec, LabelJobSpec, SummarizeJobSpec
from .summary import JobSummary
from .tasks import CaptionTask, LabelTask, SummarizeTask, TaskAdapter

__all__ = [
    "CaptionJobSpec",
    "CaptionTask",
    "CommitError",
    "JobPlan",
    "JobSpec",
    "JobStoppedError",
    "JobSummary",
    "LabelJobSpec",
    "LabelTask",
    "LeaseLostError",
    "OutputExistsError",
    "OutputLeasedError",
    "Preflight",
    "PreflightError",
    "SummarizeJobSpec",
    "SummarizeTask",
    "TaskAdapter",
    "build_plan",
    "format_summary",
    "preflight",
    "run_job",
    "run_plan",
]
