"""The plan: a validated job spec, resolved once on the driver into what every stage needs.

It flows whole into the stage builder and the actors (it is a plain picklable value),
so no stage takes a spec apart into loose arguments. Building it checks what can be
checked before the output is touched and before Ray starts: model.uri (config and
tokenizer / image processor, no weights), and the captions file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from combiner_core.describe import CheckpointInfo, describe_checkpoint
from combiner_core.errors import CombinerError
from combiner_core.storage import (
    StorageAccessError,
    absolute_uri,
    is_hub_id,
    is_remote,
    storage_access,
)

from ..readers import (
    CaptionsFileError,
    InputListingError,
    ReaderOptions,
    input_extensions,
    list_input_files,
    read_captions_file,
)
from ..specs import canonical_sha256, spec_hash
from .commit import output_schema
from .specs import JobSpec, ResourcesSpec
from .tasks import TaskAdapter


class ModelSpecError(ValueError):
    """model.uri cannot serve this job (said before anything is written)."""


class InputSpecError(ValueError):
    """The input section names something unreadable (said before anything is written)."""


@dataclass(frozen=True)
class ModelPlan:
    """The combiner the actors load."""

    uri: str
    dtype: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    weights_bytes: int = 0  # 0 when unknown (a hub id)
    modality: str | None = None  # what the model reads; None when unknown (a hub id)


@dataclass(frozen=True)
class JobPlan:
    """Everything a generation job's stages need, resolved on the driver.

    Attributes:
        task: the task adapter (what differs between task kinds).
        reader: how shards are read (absolute root).
        files_per_shard: image / text files per commit unit.
        output_uri, output_mode: where results go and how (absolute, output.mode).
        model: what the actors load.
        resources: workers, GPUs and CPUs.
        batch_size: rows per model call on an actor.
        lineage: model_uri, spec_hash, params_hash (copied to every output row).
        fingerprint: the job fingerprint (resume refuses another one).
        storage_options: fsspec options (credentials stay in the environment).
        gallery_rows: rows shown in _gallery.html (0: none).
    """

    task: TaskAdapter
    reader: ReaderOptions
    files_per_shard: int
    output_uri: str
    output_mode: str
    model: ModelPlan
    resources: ResourcesSpec
    batch_size: int
    lineage: dict[str, str]
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    gallery_rows: int = 0

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
) -> CheckpointInfo | None:
    """model.uri names a combiner of the modality the task reads (JSON files only, no weights).

    Returns what was learned (None for a hub id, which only the actors resolve).
    """
    try:
        with storage_access(model_uri):
            info = describe_checkpoint(model_uri, storage_options=storage_options)
    except CombinerError as exc:
        raise ModelSpecError(f"model.uri {model_uri}: {exc}") from exc
    except OSError as exc:  # object storage refused (credentials, endpoint)
        raise ModelSpecError(f"model.uri {model_uri}: cannot read it ({type(exc).__name__}: {exc})") from exc
    if info is not None and task.modality is not None and info.modality != task.modality:
        want = "an image" if task.modality == "image" else "a text"
        raise ModelSpecError(
            f"model.uri {model_uri} is a {info.modality} combiner ({info.layout}), but {task.name} "
            f"needs {want} combiner; point model.uri at one"
        )
    return info


def build_plan(spec: JobSpec, *, storage_options: dict[str, Any] | None = None) -> JobPlan:
    """Resolve `spec` (already validated) into a JobPlan; raises ModelSpecError / InputSpecError."""
    spec = spec.resolved()
    task = spec.task()
    options = dict(storage_options or {})
    # Workers may run in another folder (ray job submit's working_dir): paths made absolute.
    model_uri = absolute_uri(spec.model.uri, hub_ids=True)
    info = check_model(task, model_uri, storage_options=options)
    reader = spec.reader_options()
    reader = replace(
        reader,
        root=absolute_uri(reader.root),
        captions_file=absolute_uri(reader.captions_file) if reader.captions_file else None,
        storage_options=options,
    )
    if reader.captions_file:
        try:
            with storage_access(reader.captions_file):
                read_captions_file(reader.captions_file, options)
        except CaptionsFileError as exc:
            raise InputSpecError(f"input.{exc}") from None
        except StorageAccessError as exc:
            raise InputSpecError(f"input.captions_file: {exc}") from None
    return JobPlan(
        task=task,
        reader=reader,
        files_per_shard=spec.input.files_per_shard,
        output_uri=absolute_uri(spec.output.uri),
        output_mode=spec.output.mode,
        model=ModelPlan(
            uri=model_uri, dtype=spec.model.dtype, allow_pickle=spec.model.allow_pickle,
            trust_remote_code=spec.model.trust_remote_code, weights_bytes=info.weights_bytes if info else 0,
            modality=info.modality if info else task.modality,
        ),
        resources=spec.resources,
        batch_size=spec.batch_size,
        lineage={"model_uri": model_uri, "spec_hash": spec_hash(spec), "params_hash": params_hash(task.params_digest_source())},
        fingerprint=spec.job_fingerprint(),
        storage_options=options,
        gallery_rows=spec.output.gallery_rows,
    )


def preflight(spec: JobSpec) -> list[str]:
    """What `--validate-only` checks besides the spec itself; returns one line per check.

    Local paths are probed (the model folder is a combiner of the right modality, the
    input matches files); remote URIs are named but not probed, since that needs
    credentials and the network (the job itself checks them before it writes).
    Raises ModelSpecError / InputSpecError for a local problem.
    """
    spec = spec.resolved()
    task = spec.task()
    lines = []
    model_uri = absolute_uri(spec.model.uri, hub_ids=True)
    if is_remote(model_uri) or is_hub_id(model_uri):
        lines.append(f"model.uri {model_uri}: remote, not probed by --validate-only")
    else:
        info = check_model(task, model_uri)
        lines.append(f"model.uri {model_uri}: a {info.layout} combiner ({info.modality}), ok" if info else "")
    reader = spec.reader_options()
    root = absolute_uri(reader.root)
    if is_remote(root):
        lines.append(f"input.uri {root}: remote, not probed by --validate-only")
    else:
        try:
            files, _ = list_input_files(root, format=reader.format, extensions=reader.extensions)
        except InputListingError as exc:
            raise InputSpecError(f"input.uri: {exc}") from None
        if not files:
            raise InputSpecError(
                f"input.uri {root}: no {reader.format} input files there (names ending in "
                f"{', '.join(input_extensions(reader))}); check the path and input.format"
            )
        lines.append(f"input.uri {root}: {len(files)} {reader.format} file(s), ok")
    output = absolute_uri(spec.output.uri)
    lines.append(f"output.uri {output}: " + ("remote, not probed" if is_remote(output) else "local"))
    return [line for line in lines if line]
