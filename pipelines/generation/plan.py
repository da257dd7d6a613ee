"""The plan: a validated job spec, resolved once on the driver into what every stage needs.

It flows whole into the stage builder and the actors (it is a plain picklable value),
so no stage takes a spec apart into loose arguments. Building it checks model.uri
(config and tokenizer / image processor, no weights; generation fitted to the decoder's
positions) and the captions file; preflight.py adds the input and output checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from combiner_core.describe import CheckpointInfo, describe_checkpoint
from combiner_core.errors import CombinerError
from combiner_core.storage import StorageAccessError, absolute_uri, storage_access

from ..preflight import PreflightError
from ..reading import SHARD_BYTES, CaptionsFileError, ReaderOptions, read_captions_file
from ..specs import canonical_sha256, spec_hash
from .output import output_schema
from .specs import JobSpec, ResourcesSpec
from .tasks import TaskAdapter


@dataclass(frozen=True)
class ModelPlan:
    """The combiner the actors load."""

    uri: str
    dtype: str = "auto"
    quantize: str | None = None  # "int8" (CPU float32): the engine / scorer quantizes its linears
    allow_pickle: bool = False
    trust_remote_code: bool = False
    weights_bytes: int = 0  # 0 when unknown (a hub id)
    modality: str | None = None  # what the model reads
    weights_id: str = ""  # which weights (CheckpointInfo.weights_id): a resume refuses others


@dataclass(frozen=True)
class JobPlan:
    """Everything a generation job's stages need, resolved on the driver.

    Attributes:
        task: the task adapter (what differs between task kinds).
        reader: how shards are read (absolute root).
        files_per_shard: image / text files per commit unit.
        shard_bytes: input bytes per commit unit (image / text files; Parquet ranges).
        output_uri, output_mode: where results go and how (absolute, output.mode).
        max_error_rate: above this share of errored rows the run fails (output.max_error_rate).
        model: what the actors load.
        resources: workers, GPUs and CPUs.
        batch_size: rows per model call on an actor.
        lineage: model_uri, spec_hash, params_hash (copied to every output row).
        fingerprint: the job fingerprint (resume refuses another one).
        fingerprint_of: the spec values it hashes (a refusal names those that differ).
        storage_options: fsspec options (credentials stay in the environment).
        gallery_rows: rows shown in _gallery.html (0: none).
    """

    task: TaskAdapter
    reader: ReaderOptions
    files_per_shard: int
    output_uri: str
    output_mode: str
    max_error_rate: float
    model: ModelPlan
    resources: ResourcesSpec
    batch_size: int
    lineage: dict[str, str]
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    gallery_rows: int = 0
    shard_bytes: int = SHARD_BYTES
    fingerprint_of: dict[str, Any] = field(default_factory=dict)

    @property
    def output_schema(self) -> pa.Schema:
        return output_schema(self.task.output_fields())


def params_hash(source: Any) -> str:
    """sha256 of a task's parameters as canonical JSON (output lineage)."""
    if isinstance(source, BaseModel):
        source = source.model_dump(mode="json")
    return canonical_sha256(source)


def check_model(
    task: TaskAdapter, model_uri: str, *, storage_options: dict[str, Any] | None = None
) -> tuple[CheckpointInfo | None, list[str]]:
    """What model.uri holds (JSON files only, no weights), or the problems with it: missing,
    not a combiner, no tokenizer, or another modality than the task reads."""
    try:
        with storage_access(model_uri):
            info = describe_checkpoint(model_uri, storage_options=storage_options)
    except CombinerError as exc:
        return None, [f"model.uri: {exc}" if model_uri in str(exc) else f"model.uri {model_uri}: {exc}"]
    except OSError as exc:  # object storage refused (credentials, endpoint)
        return None, [f"model.uri {model_uri}: cannot read it ({type(exc).__name__}: {exc})"]
    if task.modality is not None and info.modality != task.modality:
        want = "an image" if task.modality == "image" else "a text"
        return None, [
            f"model.uri {model_uri} is {'an' if info.modality == 'image' else 'a'} {info.modality} combiner "
            f"({info.layout}), but {task.name} "
            f"needs {want} combiner; point model.uri at one"
        ]
    return info, []


def reader_of(spec: JobSpec, storage_options: dict[str, Any]) -> ReaderOptions:
    """The spec's reader options with absolute paths (workers run in other folders)."""
    reader = spec.reader_options()
    return replace(
        reader,
        root=absolute_uri(reader.root),
        captions_file=absolute_uri(reader.captions_file) if reader.captions_file else None,
        storage_options=storage_options,
    )


def resolve_plan(
    spec: JobSpec, *, storage_options: dict[str, Any] | None = None
) -> tuple[JobPlan | None, list[str]]:
    """`spec` (validated, resolved) as a JobPlan, or the problems that stop it (model.uri,
    generation limits, the captions file). Reads JSON files, no weights; writes nothing."""
    task = spec.task()
    options = dict(storage_options or {})
    # Workers may run in another folder (ray job submit's working_dir): paths made absolute.
    model_uri = absolute_uri(spec.model.uri, hub_ids=True)
    info, problems = check_model(task, model_uri, storage_options=options)
    if info is not None:
        spec, fit_problems = spec.fit_to_model(info)
        task = spec.task()
        problems += fit_problems + task.model_problems(model_uri, info, trust_remote_code=spec.model.trust_remote_code)
    reader = reader_of(spec, options)
    if reader.captions_file:
        try:
            with storage_access(reader.captions_file):
                read_captions_file(reader.captions_file, options)
        except CaptionsFileError as exc:
            problems.append(f"input.{exc}")
        except StorageAccessError as exc:
            problems.append(f"input.captions_file: {exc}")
    if problems or info is None:
        return None, problems
    plan = JobPlan(
        task=task,
        reader=reader,
        files_per_shard=spec.input.files_per_shard,
        output_uri=absolute_uri(spec.output.uri),
        output_mode=spec.output.mode,
        max_error_rate=spec.output.max_error_rate,
        model=ModelPlan(
            uri=model_uri, dtype=spec.model.dtype, quantize=spec.model.quantize, allow_pickle=spec.model.allow_pickle,
            trust_remote_code=spec.model.trust_remote_code, weights_bytes=info.weights_bytes,
            modality=info.modality, weights_id=info.weights_id,
        ),
        resources=spec.resources,
        batch_size=spec.batch_size,
        lineage={"model_uri": model_uri, "spec_hash": spec_hash(spec),
                 "params_hash": params_hash(task.params_digest_source())},
        fingerprint=spec.job_fingerprint(),
        fingerprint_of=spec.fingerprint_data(),
        storage_options=options,
        gallery_rows=spec.output.gallery_rows,
        shard_bytes=max(1, round(spec.input.shard_mib * 1024**2)),
    )
    return plan, []


def build_plan(spec: JobSpec, *, storage_options: dict[str, Any] | None = None) -> JobPlan:
    """Resolve `spec` (already validated) into a JobPlan, or raise PreflightError listing
    every problem found (model, generation limits, captions file)."""
    plan, problems = resolve_plan(spec.resolved(), storage_options=storage_options)
    if plan is None:
        raise PreflightError("job", problems)
    return plan
