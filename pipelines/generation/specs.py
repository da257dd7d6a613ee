"""Job specs of the two generation jobs: caption_dataset and summarize_corpus.

The YAML keys are a contract (tools and tests script against them):

    input:     uri, format, id_column, image_column | text_column, reference_column, files_per_shard
    output:    uri, mode (error_if_exists | resume | overwrite)
    model:     uri, allow_pickle, trust_remote_code
    generation: combiner_core.GenerationParams (strategy, max_new_tokens, num_beams, ...)
    batch_size, truncation (summarize only)
    resources: workers, num_gpus, preprocess_cpus
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

from pydantic import Field, model_validator

from combiner_core import GenerationParams

from ..specs import ModelSource, StrictModel, canonical_sha256

OutputMode = Literal["error_if_exists", "resume", "overwrite"]


class OutputSpec(StrictModel):
    """Where results go, and what to do when something is already there."""

    uri: str = Field(
        description="output folder or prefix (local path, file:// or s3://); data files land here, "
        "rejected rows in <uri>/_errors/, the run summary in <uri>/_summary.json"
    )
    mode: OutputMode = Field(
        "error_if_exists",
        description="error_if_exists: refuse a non-empty output; resume: keep committed shards and "
        "process the rest (the rerun after a crash); overwrite: delete the output first",
    )


class ResourcesSpec(StrictModel):
    """How much of the cluster the job uses."""

    workers: int = Field(1, ge=1, le=4096, description="generation actors; each loads the model once")
    num_gpus: float = Field(
        0, ge=0, le=16, description="GPUs per generation actor; 0 runs the model on CPU"
    )
    preprocess_cpus: float = Field(
        1, gt=0, le=64, description="CPUs reserved by each decode/read task (Ray Data CPU tasks)"
    )
    worker_cpus: float = Field(
        1, ge=0, le=64, description="CPUs reserved by each generation actor (besides its GPUs)"
    )


class _JobBase(StrictModel):
    output: OutputSpec = Field(description="output location and write mode")
    model: ModelSource = Field(description="the combiner that generates")
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="decoding parameters (combiner_core.GenerationParams)"
    )
    batch_size: int = Field(16, ge=1, le=4096, description="rows per generation batch on each actor")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="workers, GPUs and CPUs")

    def job_fingerprint(self) -> str:
        """Hash of what decides the output rows (input, model, generation, truncation).

        A resumed run must match the run that wrote the committed shards; output.mode,
        batch size and resources do not change results, so they are left out.
        """
        data = self.model_dump(mode="json", include={"input", "model", "generation", "truncation"})
        return canonical_sha256(data)


class CaptionInput(StrictModel):
    """Images to caption."""

    uri: str = Field(
        description="a folder/prefix of image files (jpg, jpeg, png, webp, bmp, gif: first frame), "
        "a folder/prefix of Parquet shards, one file, or a glob; local, file:// or s3://"
    )
    format: Literal["images", "parquet"] = Field(
        "images", description="images: one image per file; parquet: an image-bytes column per row"
    )
    image_column: str = Field(
        "image",
        description="parquet: column holding encoded image bytes (or a {bytes, path} struct as "
        "Hugging Face datasets store it)",
    )
    id_column: str | None = Field(
        None,
        description="parquet: column with row ids; when unset ids are '<shard file>#<row>'. "
        "For images the id is the file path relative to input.uri",
    )
    reference_column: str | None = Field(
        None,
        description="parquet: column with a reference caption, copied to the output as 'reference' "
        "and scored by exact match in the summary",
    )
    files_per_shard: int = Field(
        256,
        ge=1,
        le=100_000,
        description="images: files per commit unit (a shard); parquet shards are one file each",
    )


class CaptionJobSpec(_JobBase):
    """caption_dataset: one caption (or num_return_sequences) per image."""

    input: CaptionInput = Field(description="the images to caption")

    @model_validator(mode="after")
    def _cross_checks(self) -> CaptionJobSpec:
        problems = []
        if self.input.format == "images" and (self.input.id_column or self.input.reference_column):
            problems.append(
                "input.id_column / input.reference_column: only used with input.format=parquet "
                "(an image file's id is its path); remove them or set input.format=parquet"
            )
        problems += _resource_problems(self.resources)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SummarizeInput(StrictModel):
    """Documents to summarize."""

    uri: str = Field(
        description="a folder/prefix of shards, one file, or a glob; local, file:// or s3://. "
        "May contain {date} (filled from the top-level `date` key)"
    )
    format: Literal["jsonl", "parquet", "text_lines", "text_files"] = Field(
        "jsonl",
        description="jsonl / parquet: one document per row in text_column; text_lines: one "
        "document per line of each file; text_files: one document per file",
    )
    text_column: str = Field("text", description="jsonl / parquet: field holding the document text")
    id_column: str | None = Field(
        None,
        description="jsonl / parquet: field with document ids; when unset ids are "
        "'<shard file>#<row>' (text_files: the file path relative to input.uri)",
    )
    reference_column: str | None = Field(
        None,
        description="jsonl / parquet: field with a reference summary, copied to the output as "
        "'reference' and scored by exact match in the summary",
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".txt"],
        description="text_lines / text_files: file name endings that count as documents",
    )


class SummarizeJobSpec(_JobBase):
    """summarize_corpus: one summary (or num_return_sequences) per document."""

    input: SummarizeInput = Field(description="the documents to summarize")
    date: str | None = Field(
        None,
        description="fills {date} in input.uri and output.uri (YYYY-MM-DD); default: today (UTC)",
    )
    truncation: bool = Field(
        True,
        description="cut documents longer than the model's input limit; false sends them to "
        "_errors (cause too_long) instead",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> SummarizeJobSpec:
        problems = []
        if self.date is not None:
            try:
                _dt.date.fromisoformat(self.date)
            except ValueError:
                problems.append(f"date: {self.date!r} is not a YYYY-MM-DD date; fix it or remove it for today")
        if self.input.format in ("text_lines", "text_files") and (
            self.input.id_column or self.input.reference_column
        ):
            problems.append(
                f"input.id_column / input.reference_column: not available with input.format="
                f"{self.input.format} (plain text has no fields); use jsonl or parquet"
            )
        problems += _resource_problems(self.resources)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def with_date(self, today: _dt.date | None = None) -> SummarizeJobSpec:
        """A copy with {date} filled in input.uri and output.uri, and `date` set."""
        date = self.date or (today or _dt.datetime.now(_dt.UTC).date()).isoformat()
        data = self.model_dump()
        data["date"] = date
        data["input"]["uri"] = self.input.uri.replace("{date}", date)
        data["output"]["uri"] = self.output.uri.replace("{date}", date)
        return SummarizeJobSpec.model_validate(data)


def _resource_problems(resources: ResourcesSpec) -> list[str]:
    problems = []
    if resources.num_gpus > 1 and resources.num_gpus != int(resources.num_gpus):
        problems.append(
            f"resources.num_gpus: {resources.num_gpus} is a fraction above 1; use a whole number "
            "of GPUs, or a fraction below 1 to pack several workers on one GPU"
        )
    return problems
