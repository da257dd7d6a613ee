"""Preflight: everything a generation job can check before it writes anything, in one go.

    model.uri     a combiner of the task's modality (config, tokenizer; no weights), or a
                  hub id the hub has; generation fitted to the decoder's positions
    input.uri     lists input files; the first one looks like input.format and has the
                  columns the spec names; the captions file parses
    output.uri    holds nothing that is not ours; does not overlap an input; fits
                  output.mode (error_if_exists: empty; resume: the same job)

Every problem is collected and raised once (PreflightError, a SpecError: jobs exit 2),
so a user fixes a spec in one round. Nothing here writes; the run takes the output's
lease and checks the output again under it (commit.OutputStore.prepare).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from combiner_core.storage import StorageAccessError, absolute_uri, is_remote, storage_access

from ..preflight import Preflight, PreflightError
from ..reading import (
    InputListing,
    InputListingError,
    ReaderOptions,
    check_input_files,
    glob_base,
    has_pattern,
    input_extensions,
    list_inputs,
    read_captions_file,
    read_head,
    relative_id,
    sniff,
    with_article,
)
from ..session import private_cpu_problems, starts_private_ray
from .output import Lease, OutputStore
from .plan import JobPlan, reader_of, resolve_plan
from .specs import JobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPreflight(Preflight[JobPlan]):
    """Preflight's answer for a generation job: also the input files it listed (the run
    does not list them again)."""

    listing: InputListing


def preflight(spec: JobSpec, *, storage_options: dict[str, Any] | None = None, source: str = "job") -> JobPreflight:
    """Check model, input and output of `spec` (validated); raise PreflightError listing
    every problem, each naming its YAML key."""
    spec = spec.resolved()
    options = dict(storage_options or {})
    plan, problems = resolve_plan(spec, storage_options=options)
    reader = reader_of(spec, options)
    listing, input_problems = check_input(reader)
    store = OutputStore(absolute_uri(spec.output.uri), storage_options=options)
    problems += input_problems + _check_output(store, spec.output.mode, plan, reader) + _gpu_problems(spec)
    problems += private_cpu_problems(spec.resources.cpu_demand())
    if problems or plan is None or listing is None:
        raise PreflightError(source, problems)
    _warn_on_captions(reader, listing)
    checked = [
        f"model.uri {plan.model.uri}: {'an' if plan.model.modality == 'image' else 'a'} {plan.model.modality} combiner",
        f"input.uri {reader.root}: {len(listing.files)} {reader.format} file(s); the first readable one fits "
        "input.format and has the columns named",
        f"output.uri {store.uri}: ready for output.mode={plan.output_mode}",
    ]
    return JobPreflight(plan=plan, checked=checked, listing=listing)


def check_input(reader: ReaderOptions) -> tuple[InputListing | None, list[str]]:
    try:
        with storage_access(reader.root, action="list"):
            listing = list_inputs(reader.root, format=reader.format, extensions=reader.extensions,
                                  storage_options=reader.storage_options)
    except (InputListingError, StorageAccessError) as exc:
        return None, [f"input.uri: {exc}"]
    files, ignored = listing.files, listing.ignored
    if not files:
        skipped = ""
        if ignored:
            skipped = f"; {len(ignored)} other file(s) were skipped, e.g. {ignored[0]}{_looks_like(ignored[0], reader)}"
        where = "the pattern" if has_pattern(reader.root) else "the folder, recursively"
        return None, [
            f"input.uri {reader.root}: no {reader.format} input files there (searched {where} for names "
            f"ending in {', '.join(input_extensions(reader))}{skipped}). Check the path, input.format "
            "and input.extensions"
        ]
    try:
        with storage_access(files[0]):
            return listing, check_input_files(files, reader)
    except StorageAccessError as exc:
        return listing, [f"input.uri: {exc}"]


def _warn_on_captions(reader: ReaderOptions, listing: InputListing) -> None:
    """Say once when the captions file and the input files do not name the same files
    (references are optional, so this is no problem, but a typo there is silent)."""
    if not reader.captions_file:
        return
    captions = set(read_captions_file(reader.captions_file, reader.storage_options))
    ids = {relative_id(f, reader.root) for f in listing.files}
    stray, bare = sorted(captions - ids), len(ids - captions)
    if stray or bare:
        log.warning("input.captions_file %s: %d caption(s) name no input file%s; %d input file(s) have no caption",
                    reader.captions_file, len(stray), f" (e.g. {stray[0]})" if stray else "", bare)


def _gpu_problems(spec: JobSpec) -> list[str]:
    """GPUs asked for by a job that starts its own Ray on this machine (no RAY_ADDRESS),
    which has fewer: the actors would wait for them forever. (On a cluster, GPU nodes
    may still be starting: the autoscaler's business, not checked here.)"""
    wanted = spec.resources.num_gpus
    if not wanted or not starts_private_ray():
        return []  # a cluster, or a caller that started Ray itself
    try:  # Ray's own count (NVML), as the private Ray would see it; ~0.5 s, GPU jobs only
        from ray._private.accelerators import get_accelerator_manager_for_resource

        have = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:  # noqa: BLE001 - a Ray without this internal: the job finds out itself
        return []
    if have >= wanted:
        return []
    return [f"resources.num_gpus: {wanted:g} per model actor, but this machine has {have} GPU(s), and without "
            "RAY_ADDRESS the job starts its own Ray here: the actors would wait forever. Set "
            "resources.num_gpus=0 to run on CPU, or submit the job to a GPU cluster (ray job submit)"]


def _looks_like(uri: str, reader: ReaderOptions) -> str:
    """' (a tar archive)': what a skipped file is, so a wrong format says what was found."""
    try:
        kind = sniff(read_head(uri, reader.storage_options, decompress=False))
    except Exception:  # noqa: BLE001 - a hint only; the message stands without it
        return ""
    hint = "; tar shards (WebDataset) are read with input.format=webdataset" if kind == "tar archive" else ""
    return f" ({with_article(kind)}{hint})"


def _check_output(store: OutputStore, mode: str, plan: JobPlan | None, reader: ReaderOptions) -> list[str]:
    problems = [
        f"output.uri: {store.uri} overlaps {key} {uri} (equal to, inside or containing it): the job would "
        "read its own output as input, and its output mode could touch the input. Put the output beside "
        "the input, not in it"
        for key, uri in (("input.uri", reader.root), ("input.captions_file", reader.captions_file))
        if uri and _overlaps(store.uri, _location(uri))
    ]
    if problems:
        return problems
    try:
        with storage_access(store.uri, action="list"):
            survey = store.survey()
            problem = survey.foreign_problem(store.uri) or _placement_problem(store)  # before the lease
            if problem is None:
                holder = Lease(store.fs, store.root, store.uri, run_id="preflight").held_by_another()
                problem = holder or store.existing_problem(survey, mode)
            if problem is None and plan is not None and mode == "resume":
                problem = store.fingerprint_problem(survey, plan.fingerprint, plan.model.weights_id,
                                                    fingerprint_of=plan.fingerprint_of)
    except StorageAccessError as exc:
        return [f"output.uri: {exc}"]
    return [problem] if problem else []


def _placement_problem(store: OutputStore) -> str | None:
    """An output inside another job's output (plain readers of that one would read these
    rows as its own), or in a bucket that does not exist (writing would create it)."""
    fs, path = store.fs, store.root
    parents = []
    while "/" in path.strip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0]
        parents.append(path)
    for parent in parents:
        if parent and fs.exists(f"{parent}/_job.json") and OutputStore(_uri_like(store.uri, parent)).job_record():
            return (f"output.uri: {store.uri} is inside the output of another job ({_uri_like(store.uri, parent)}): "
                    "readers of that output would take these rows for its own. Put it beside that output")
    if is_remote(store.uri) and parents and not fs.exists(parents[-1]):
        return (f"output.uri: the bucket {parents[-1]!r} of {store.uri} does not exist (or these credentials "
                "cannot see it); create it first: a job does not create buckets")
    return None


def _uri_like(uri: str, path: str) -> str:
    """`path` (an fsspec path) with the protocol of `uri`."""
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def _location(uri: str) -> str:
    """The folder or file a URI reads: a pattern's fixed folder; local symlinks resolved."""
    if has_pattern(uri) and not (not is_remote(uri) and os.path.exists(uri)):
        uri = glob_base(uri)
    return _normal(uri)


def _normal(uri: str) -> str:
    return uri.rstrip("/") if is_remote(uri) else os.path.realpath(uri)


def _overlaps(a: str, b: str) -> bool:
    a = _normal(a)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
