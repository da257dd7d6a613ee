"""Job specs of the generation pipeline: caption_dataset, summarize_corpus and label_dataset.

The YAML keys are a contract (tools and tests script against them):

    input:      uri, format, input_column, id_column, reference_column, captions_file,
                extensions, files_per_shard, shard_mib (see pipelines.reading.source)
    output:     uri, mode (error_if_exists | resume | overwrite)
    model:      uri, dtype, quantize, allow_pickle, trust_remote_code
    generation: combiner_core.GenerationParams (strategy, max_new_tokens, num_beams, ...)
    batch_size, long_documents (summarize only), date (summarize only)
    resources:  workers, num_gpus, worker_cpus, preprocess_cpus

Every job spec names its task adapter (`task()`): that, and the spec's own keys, is
all a new task kind adds.
"""

from __future__ import annotations

import datetime as _dt
import logging
from abc import abstractmethod
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from combiner_core import GenerationParams
from combiner_core.describe import CheckpointInfo
from combiner_core.storage import normal_uri

from ..reading import (
    FILES_PER_SHARD,
    SHARD_BYTES,
    InputFormat,
    InputSource,
    ReaderOptions,
    has_pattern,
)
from ..session import CpuDemand
from ..specs import ModelSource, StrictModel, canonical_sha256, path_field
from .tasks import CaptionTask, LabelTask, SummarizeTask, TaskAdapter

log = logging.getLogger(__name__)

OutputMode = Literal["error_if_exists", "resume", "overwrite"]


class OutputSpec(StrictModel):
    """Where results go, and what to do when something is already there."""

    uri: str = path_field(
        description="output folder or prefix (local path, file:// or s3://); data files land here, "
        "rejected rows in <uri>/_errors/, the run summary in <uri>/_summary.json. It must be new, "
        "empty, or an earlier output of a job, and must not overlap the input",
        min_length=1,
    )
    mode: OutputMode = Field(
        "error_if_exists",
        description="error_if_exists: refuse an output that holds an earlier run's results; resume: keep "
        "committed shards and process the rest (the rerun after a crash); overwrite: delete the earlier "
        "run's files first (only files a job writes: an output holding anything else is refused in every mode)",
    )
    max_error_rate: float = Field(
        0.1, ge=0.0, le=1.0,
        description="the share of rows that may go to _errors before the run counts as failed: above it "
        "the job still commits what succeeded, but writes no _SUCCESS and exits 3, so a scheduler does "
        "not publish an output whose rows mostly failed (a wrong column, unreadable files). 0.1 lets a "
        "few corrupt files through; a run where every row failed fails whatever this says",
    )
    gallery_rows: int = Field(
        0, ge=0, le=10_000,
        description="write <uri>/_gallery.html showing up to this many outputs (input thumbnail or "
        "text, output, score, reference, match) and errored inputs; 0 = no gallery",
    )


class ResourcesSpec(StrictModel):
    """How much of the cluster the job uses."""

    workers: int = Field(1, ge=1, le=4096, description="model actors; each loads the model once")
    num_gpus: float = Field(
        0, ge=0, le=16, description="GPUs per model actor; 0 runs the model on CPU"
    )
    preprocess_cpus: float = Field(
        1, gt=0, le=64, description="CPUs reserved by each read/decode/tokenize task (Ray Data CPU tasks)"
    )
    worker_cpus: float = Field(
        1, ge=0, le=64,
        description="CPUs reserved by each model actor (besides its GPUs); on CPU it also sets the "
        "actor's torch threads (at least 1)",
    )

    def cpu_demand(self) -> CpuDemand:
        """The model actors hold their CPUs for the whole run; Ray Data's read tasks need
        preprocess_cpus each beside them."""
        return CpuDemand(workers=self.workers, cpus_per_worker=self.worker_cpus, reader_cpus=self.preprocess_cpus,
                         workers_key="resources.workers", cpus_key="resources.worker_cpus",
                         reader_key="resources.preprocess_cpus")


class GenerationModel(ModelSource):
    """The combiner a job runs, and the precision it runs in."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations on the actor; auto = bfloat16 on GPU, float32 on CPU"
    )
    quantize: Literal["int8"] | None = Field(
        None,
        description="int8: every linear layer (encoder, decoder, LM head) in int8 with one scale per "
        "output channel, activations quantized per row at run time, biases and norms float32 "
        "(CTranslate2's int8). CPU only (resources.num_gpus 0) and float32 (model.dtype auto or "
        "float32). Outputs differ slightly from float32's: on the demo models exact match, ROUGE-L and "
        "label accuracy stayed within 0.01",
    )


class JobInput(InputSource):
    """The rows a job reads (pipelines.reading.source), plus references and shard size."""

    reference_column: str | None = Field(
        None,
        description="parquet / jsonl: column with a reference text, copied to the output as "
        "'reference' and scored in the summary (images: use captions_file; webdataset: a text member such as txt, or json.<field> for a field of the json member)",
    )
    files_per_shard: int = Field(
        FILES_PER_SHARD,
        ge=1,
        le=100_000,
        description="images / text_files: at most this many files per commit unit (a shard), and at most "
        "shard_mib of them: hundreds of rows commit every few seconds per model actor (fewer would multiply "
        "the driver's commits and the output's files), and a folder spreads over many read tasks",
    )
    shard_mib: float = Field(
        SHARD_BYTES / 1024**2,
        gt=0,
        le=1024**2,
        description="MiB of input per commit unit (a shard). images / text_files: a shard stops at this size "
        "or at files_per_shard files (64 MiB: 256 web images of ~250 KB, or a dozen 5 MB photos, whose "
        "decoding costs about as much); parquet: a larger file is split into ranges of row groups up to this "
        "size each (one row group at least), read by several tasks and committed in parts; jsonl, "
        "text_lines and webdataset shards are one file each. Not part of the job's fingerprint: a "
        "resumed job may change it",
    )

    def source_problems(self, *, key: str, modality: str | None = None) -> list[str]:
        problems = super().source_problems(key=key, modality=modality)
        if self.reference_column and self.format not in ("parquet", "jsonl", "webdataset"):
            problems.append(
                f"{key}.reference_column: only used with format parquet or jsonl (format is "
                f"{self.format}); images take references from {key}.captions_file"
            )
        return problems


_MAX_PIXELS = Field(
    None, ge=1,
    description="images: an image over this many pixels goes to _errors (cause too_large) before its pixels "
    "are decoded, which bounds a read task's memory (a 100-megapixel image is 300 MB as RGB); default: "
    "combiner_core's 64 million (phone photos are 12-50 million)",
)


class CaptionInput(JobInput):
    """Images to caption (image files, or encoded images in Parquet / JSONL rows)."""

    format: InputFormat = Field("images", description=JobInput.model_fields["format"].description)
    input_column: str | None = Field("image", description=JobInput.model_fields["input_column"].description)
    max_pixels: int | None = _MAX_PIXELS


class SummarizeInput(JobInput):
    """Documents to summarize."""

    format: InputFormat = Field("jsonl", description=JobInput.model_fields["format"].description)
    input_column: str | None = Field("text", description=JobInput.model_fields["input_column"].description)


class JobSpec(StrictModel):
    """What every generation-pipeline job spec has; subclasses add their task's keys."""

    input: JobInput = Field(description="the rows to process")
    output: OutputSpec = Field(description="output location and write mode")
    model: GenerationModel = Field(description="the combiner that runs the task")
    batch_size: int = Field(
        256, ge=1, le=4096,
        description="rows per model call on each actor. The engine keeps its decoder slots (64 "
        "rows on CPU, 256 on GPU: combiner_core.engine.DEFAULT_ROWS) full from them, refilling "
        "a finished row's slot at once, so only the tail of each call runs part-full: 256 keeps "
        "that tail under a quarter of a CPU call",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="workers, GPUs and CPUs")

    @abstractmethod
    def task(self) -> TaskAdapter:
        """The task adapter this spec configures."""

    def resolved(self) -> JobSpec:
        """The spec with run-time values filled in (e.g. {date}); identity by default."""
        return self

    def fit_to_model(self, info: CheckpointInfo) -> tuple[JobSpec, list[str]]:
        """The spec fitted to what the model can do, and the problems it cannot fit.

        Checked on the driver from the model's config (no weights): a value the user set
        past a limit is a problem naming its key; a default past it is lowered (logged).
        """
        return self, []

    # Keys that do not change an output row: left out of the fingerprint. `date` only
    # fills {date} in the URIs, which are in it already.
    _NOT_IN_FINGERPRINT: ClassVar[set[str]] = {"output", "batch_size", "resources", "date"}

    def job_fingerprint(self) -> str:
        """Hash of what decides the output rows (input, model and its dtype, task options):
        canonical_sha256 of `fingerprint_data`.

        A resumed run must match the run that wrote the committed shards. Paths count by
        what they name, not how they are spelled (./in, in/, /abs/in are one input).
        """
        return canonical_sha256(self.fingerprint_data())

    def fingerprint_data(self) -> dict[str, Any]:
        """The spec's values the fingerprint hashes (kept in _job.json, so a refused
        resume can name the keys that differ)."""
        # shard_mib cuts the same rows into other commit units: a resume takes any (the
        # committed row groups of each file are what count), and outputs written before
        # the key existed keep their fingerprint.
        data = self.model_dump(mode="json", exclude=self._NOT_IN_FINGERPRINT)
        data["input"].pop("shard_mib", None)
        data["input"]["uri"] = normal_uri(data["input"]["uri"])
        if data["input"].get("captions_file"):
            data["input"]["captions_file"] = normal_uri(data["input"]["captions_file"])
        data["model"]["uri"] = normal_uri(data["model"]["uri"], hub_ids=True)
        if data["model"].get("quantize") is None:  # fingerprints of float jobs stay what they were
            data["model"].pop("quantize", None)
        return data

    def reader_options(self) -> ReaderOptions:
        return self.input.reader_options(reference_column=self.input.reference_column)

    def _input_modality(self) -> str | None:
        """What the input must hold for this job's task (None: either)."""
        return self.task().modality

    def _problems(self) -> list[str]:
        problems = self.input.source_problems(key="input", modality=self._input_modality())
        bad = sorted(set("*?[]") & set(self.output.uri))
        if bad or has_pattern(self.output.uri):
            bad = bad or ["{ }"]
            problems.append(f"output.uri: {self.output.uri!r} holds {' '.join(bad)}, which object stores and "
                            "fsspec read as a pattern or a query; name the output without * ? [ ] or braces")
        r = self.resources
        if self.model.quantize is not None:
            if r.num_gpus > 0:
                problems.append(f"model.quantize: {self.model.quantize} runs on CPU only, but resources.num_gpus is "
                                f"{r.num_gpus}; set resources.num_gpus to 0 or drop model.quantize")
            if self.model.dtype not in ("auto", "float32"):
                problems.append(f"model.quantize: {self.model.quantize} needs float32 weights (its biases and norms "
                                f"stay float32), but model.dtype is {self.model.dtype}; set model.dtype to float32 "
                                "or drop model.quantize")
        if r.num_gpus > 1 and r.num_gpus != int(r.num_gpus):
            problems.append(
                f"resources.num_gpus: {r.num_gpus} is a fraction above 1; use a whole number "
                "of GPUs, or a fraction below 1 to pack several workers on one GPU"
            )
        return problems

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        problems = self._problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self


def fit_generation(generation: GenerationParams, info: CheckpointInfo) -> tuple[GenerationParams, list[str]]:
    """`generation` within the decoder's positions (see JobSpec.fit_to_model)."""
    limit = info.max_new_tokens
    if limit is None or generation.max_new_tokens <= limit:
        return generation, []
    problems = [
        f"generation.{key}: {value} is past the {limit} positions of the decoder of model.uri "
        f"{info.uri} (a row can have at most {limit} tokens); set it to {limit} or less"
        for key, value in (("max_new_tokens", generation.max_new_tokens), ("min_new_tokens", generation.min_new_tokens))
        if key in generation.model_fields_set and value > limit
    ]
    if problems:
        return generation, problems
    log.info("generation.max_new_tokens: the default %d is past the %d positions of the model's decoder; "
             "using %d", generation.max_new_tokens, limit, limit)
    return generation.model_copy(update={"max_new_tokens": limit}), []


class _GenerateJobSpec(JobSpec):
    """Caption and summarize: free generation with `generation`."""

    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="decoding parameters (combiner_core.GenerationParams)"
    )

    def fit_to_model(self, info: CheckpointInfo) -> tuple[JobSpec, list[str]]:
        generation, problems = fit_generation(self.generation, info)
        if generation is self.generation:
            return self, problems
        # A copy without validation: the fitted value is within every bound already.
        return self.model_copy(update={"generation": generation}), problems


class CaptionJobSpec(_GenerateJobSpec):
    """caption_dataset: one caption (or num_return_sequences) per image."""

    input: CaptionInput = Field(description="the images to caption")

    def task(self) -> TaskAdapter:
        return CaptionTask(params=self.generation, max_pixels=self.input.max_pixels)


class SummarizeJobSpec(_GenerateJobSpec):
    """summarize_corpus: one summary (or num_return_sequences) per document."""

    input: SummarizeInput = Field(
        description="the documents to summarize; uri may contain {date} (filled from `date`)"
    )
    date: str | None = Field(
        None,
        description="fills {date} in input.uri and output.uri (YYYY-MM-DD); default: today (UTC)",
    )
    long_documents: Literal["chunk", "truncate", "reject"] = Field(
        "chunk",
        description="documents longer than the encoder's limit: chunk = summarize windows of whole "
        "sentences, then the joined window summaries (output column chunks); truncate = cut to the "
        "limit (reported per row in truncated); reject = send to _errors (cause too_long)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # 0.1's `truncation: true|false` is `long_documents: truncate|reject`.
        if isinstance(data, dict) and "truncation" in data:
            data = dict(data)
            value = data.pop("truncation")
            if "long_documents" not in data and isinstance(value, bool):
                data["long_documents"] = "truncate" if value else "reject"
                log.warning("truncation is deprecated; it is now long_documents=%s", data["long_documents"])
            else:
                data["truncation"] = value  # reported as an unknown key
        return data

    def task(self) -> TaskAdapter:
        return SummarizeTask(params=self.generation, long_documents=self.long_documents)

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.date is not None:
            try:
                _dt.date.fromisoformat(self.date)
            except ValueError:
                problems.append(f"date: {self.date!r} is not a YYYY-MM-DD date; fix it or remove it for today")
        return problems

    def resolved(self, today: _dt.date | None = None) -> SummarizeJobSpec:
        """A copy with {date} filled in input.uri and output.uri, and `date` set."""
        date = self.date or (today or _dt.datetime.now(_dt.UTC).date()).isoformat()
        # Only what was set: which values are defaults still matters (fit_to_model).
        data: dict[str, Any] = self.model_dump(exclude_unset=True)
        data["date"] = date
        data["input"]["uri"] = self.input.uri.replace("{date}", date)
        data["output"]["uri"] = self.output.uri.replace("{date}", date)
        return SummarizeJobSpec.model_validate(data)


class LabelInput(JobInput):
    """Rows to label: images (files, or bytes in Parquet / JSONL) or texts."""

    format: InputFormat = Field("parquet", description=JobInput.model_fields["format"].description)
    input_column: str | None = Field(
        None, description="parquet / jsonl: the column holding the input (image bytes or text); required there"
    )
    max_pixels: int | None = _MAX_PIXELS


class LabelJobSpec(JobSpec):
    """label_dataset: one label of a fixed set per row (or several, multi_label), by the combiner's scores."""

    input: LabelInput = Field(description="the rows to label; input.reference_column names true labels")
    labels: list[str] | dict[str, str | list[str]] = Field(
        description="the label set: a list of names (each scored as its own text), or a mapping "
        "name -> verbalization or list of verbalizations (a label's probability is the sum of its "
        "verbalizations')"
    )
    template: str | None = Field(
        None,
        description="text inputs: what the encoder reads, with {text} for the row's text "
        "(e.g. 'topic: {text}'); images: not used",
    )
    decide_by: Literal["probability", "length_normalized"] = Field(
        "probability",
        description="probability: the label with the highest probability over the set; "
        "length_normalized: the highest per-token log-probability (long verbalizations not penalized)",
    )
    abstain_below: float = Field(
        0.0, ge=0.0, le=1.0,
        description="when the winning label's probability is below this, label is null and abstained true",
    )
    multi_label: bool = Field(
        False,
        description="each label gets its own probability (P(verbalization | input), not normalized "
        "against the others); the labels column lists every one at or above multi_label_threshold",
    )
    multi_label_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="multi_label: the probability a label needs to be listed"
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_are_text(cls, value: Any) -> Any:
        # YAML types bare words: `labels: [yes, no]` would be two booleans, [1, 2] numbers.
        items = list(value) + [v for vs in value.values() for v in (vs if isinstance(vs, list) else [vs])] \
            if isinstance(value, dict) else value if isinstance(value, list) else []
        if any(not isinstance(item, str) for item in items):
            raise ValueError(
                "YAML reads yes, no, on, off, true, false as booleans and bare numbers as numbers: put each "
                "label (and verbalization) in quotes, e.g. labels: ['yes', 'no']"
            )
        return value

    def task(self) -> TaskAdapter:
        from combiner_core.labels import LabelSet

        label_set = LabelSet.from_spec(self.labels)
        return LabelTask(
            names=label_set.names, verbalizations=label_set.verbalizations, template=self.template,
            decide_by=self.decide_by, abstain_below=self.abstain_below, multi_label=self.multi_label,
            multi_label_threshold=self.multi_label_threshold, max_pixels=self.input.max_pixels,
        )

    def _input_modality(self) -> str | None:
        return None  # images or texts: the model decides

    def _problems(self) -> list[str]:
        problems = super()._problems()
        names = list(self.labels) if isinstance(self.labels, dict) else list(self.labels)
        if not names:
            problems.append("labels: empty; give at least one label")
        elif len(names) == 1 and not self.multi_label:
            problems.append(f"labels: one label ({names[0]!r}) wins every row with probability 1; give two or "
                            "more, or set multi_label: true to score it on its own")
        if any(not name.strip() for name in names):
            problems.append("labels: a label name is empty; name every label")
        if len(set(names)) != len(names):
            problems.append(f"labels: names repeat ({sorted({n for n in names if names.count(n) > 1})}); "
                            "each label once (give several verbalizations as a list under one name)")
        if isinstance(self.labels, dict):
            for name, value in self.labels.items():
                texts = [value] if isinstance(value, str) else value
                if not texts or any(not t.strip() for t in texts):
                    problems.append(f"labels.{name}: every verbalization must be a non-empty text")
        if self.template is not None and "{text}" not in self.template:
            problems.append(f"template: {self.template!r} has no {{text}}; put {{text}} where the row's text goes")
        elif self.template is not None:
            try:
                self.template.format(text="")
            except (KeyError, IndexError, ValueError) as exc:
                problems.append(f"template: {self.template!r} has a placeholder other than {{text}} ({exc!r}); "
                                "write literal braces as {{ and }}")
        if self.template is not None and self.input.format in ("images", "webdataset"):
            problems.append("template: only for text inputs (input.format is images); remove it")
        return problems
