"""From a validated job spec to a pipeline run: the glue the job scripts in jobs/ call."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..readers import ReaderOptions
from ..session import init_ray
from ..specs import spec_hash
from .commit import ShardManifest
from .run import JobSummary, run_generation
from .specs import CaptionJobSpec, SummarizeJobSpec


def run_caption_job(
    spec: CaptionJobSpec, *, on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
) -> JobSummary:
    """caption_dataset: run `spec` to completion."""
    inp = spec.input
    reader = ReaderOptions(
        format=inp.format,
        root=inp.uri,
        value_column=inp.image_column if inp.format == "parquet" else None,
        value_key="input.image_column",
        id_column=inp.id_column,
        reference_column=inp.reference_column,
    )
    return _run("caption", spec, reader, inp.uri, inp.files_per_shard, True, on_commit, ray_init)


def run_summarize_job(
    spec: SummarizeJobSpec, *, on_commit: Callable[[ShardManifest], None] | None = None,
    ray_init: Callable[[], None] | None = init_ray,
) -> JobSummary:
    """summarize_corpus: fill {date}, then run `spec` to completion."""
    spec = spec.with_date()
    inp = spec.input
    reader = ReaderOptions(
        format=inp.format,
        root=inp.uri,
        value_column=inp.text_column if inp.format in ("jsonl", "parquet") else None,
        value_key="input.text_column",
        id_column=inp.id_column,
        reference_column=inp.reference_column,
        extensions=tuple(inp.extensions) if inp.format in ("text_lines", "text_files") else (),
    )
    return _run("summarize", spec, reader, inp.uri, 1, spec.truncation, on_commit, ray_init)


def _run(task, spec, reader, input_uri, files_per_shard, truncation, on_commit, ray_init) -> JobSummary:
    return run_generation(
        task=task,
        input_uri=input_uri,
        reader=reader,
        files_per_shard=files_per_shard,
        output_uri=spec.output.uri,
        output_mode=spec.output.mode,
        model_uri=spec.model.uri,
        allow_pickle=spec.model.allow_pickle,
        trust_remote_code=spec.model.trust_remote_code,
        params=spec.generation,
        batch_size=spec.batch_size,
        workers=spec.resources.workers,
        num_gpus=spec.resources.num_gpus,
        worker_cpus=spec.resources.worker_cpus,
        preprocess_cpus=spec.resources.preprocess_cpus,
        truncation=truncation,
        spec_hash=spec_hash(spec),
        fingerprint=spec.job_fingerprint(),
        on_commit=on_commit,
        ray_init=ray_init,
    )


def print_summary(summary: JobSummary, *, examples: int = 5) -> None:
    """The end-of-job report, as a block a person reads and a JSON line a tool parses.

    The first `examples` output rows (by id) are shown too, so a person sees what the
    model wrote, not only counts.
    """
    s = summary
    if examples and s.rows_ok:
        import pyarrow.dataset as pads

        columns = ["id", "text", "reference"] if s.reference_rows else ["id", "text"]
        # head() reads only as many files as it needs: a job of millions of rows
        # must not load its whole output onto the driver to show five.
        rows = pads.dataset(s.output_uri, format="parquet").head(examples, columns=columns).to_pylist()
        print(f"\n--- first {len(rows)} of {s.rows_ok} outputs ---")
        for r in rows:
            line = f"  {r['id']}: {r['text']!r}"
            if r.get("reference") is not None:
                line += f"  (reference: {r['reference']!r})"
            print(line)
    print(
        f"\n=== {s.rows_in} rows in: {s.rows_ok} ok, {s.rows_errored} errored "
        f"({s.rows_processed_now} processed in this run, {s.shards_committed_now} shard(s) committed, "
        f"{s.shards_committed_before} already committed) in {s.seconds:.1f}s, {s.rows_per_s:.2f} rows/s"
    )
    print(f"    output:  {s.output_uri}\n    errors:  {s.errors_uri}\n    summary: {s.summary_uri}")
    if s.exact_match_rate is not None:
        print(f"    exact match vs reference: {s.exact_match_rate:.1%} of {s.reference_rows} rows")
    print("SUMMARY " + json.dumps(s.as_dict(), sort_keys=True), flush=True)


