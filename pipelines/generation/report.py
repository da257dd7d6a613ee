"""The end-of-job report as text: what jobs/ print (libraries log, jobs print)."""

from __future__ import annotations

import json

from .summary import JobSummary

# Columns shown for the first rows of an output, per task kind's main output column.
_SHOWN = ("text", "label")


def format_summary(summary: JobSummary, *, examples: int = 5) -> str:
    """A block a person reads, ending with one `SUMMARY {json}` line a tool parses.

    The first `examples` output rows are shown too, so a person sees what the model
    wrote, not only counts.
    """
    s = summary
    lines: list[str] = []
    if examples and s.rows_ok:
        import pyarrow.dataset as pads
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(s.output_uri)
        dataset = pads.dataset(path, format="parquet", filesystem=fs)
        names = set(dataset.schema.names)
        shown = [c for c in _SHOWN if c in names]
        columns = ["id", *shown] + (["reference"] if s.metrics.get("reference_rows") else [])
        # head() reads only as many files as it needs: a job of millions of rows
        # must not load its whole output onto the driver to show five.
        rows = dataset.head(examples, columns=columns).to_pylist()
        lines.append(f"\n--- first {len(rows)} of {s.rows_ok} outputs ---")
        for r in rows:
            line = f"  {r['id']}: " + ", ".join(repr(r[c]) for c in shown)
            if r.get("reference") is not None:
                line += f"  (reference: {r['reference']!r})"
            lines.append(line)
    lines.append(
        f"\n=== {s.rows_in} rows in: {s.rows_ok} ok, {s.rows_errored} errored "
        f"({s.rows_processed_now} processed in this run, {s.shards_committed_now} shard(s) committed, "
        f"{s.shards_committed_before} already committed) in {s.seconds:.1f}s, {s.rows_per_s:.2f} rows/s"
    )
    lines.append(f"    output:  {s.output_uri}\n    errors:  {s.errors_uri}\n    summary: {s.summary_uri}")
    if s.gallery_uri:
        lines.append(f"    gallery: {s.gallery_uri}")
    if "exact_match" in s.metrics:
        lines.append(
            f"    exact match vs reference: {s.metrics['exact_match']:.1%} of {int(s.metrics['reference_rows'])} rows"
        )
    if "accuracy" in s.metrics:
        m = s.metrics
        lines.append(
            f"    accuracy vs reference: {m['accuracy']:.1%} of {int(m['reference_rows'])} rows "
            f"(abstained {m['abstained_rate']:.1%}; expected calibration error {m['expected_calibration_error']:.3f})"
        )
        for ref, row in sorted(m.get("confusion_matrix", {}).items()):
            lines.append(f"      {ref:>12} -> " + ", ".join(f"{p}: {n}" for p, n in sorted(row.items())))
    if "rouge1" in s.metrics:
        lines.append(
            "    ROUGE vs reference (F1): " + "  ".join(
                f"{k.replace('rouge', 'ROUGE-')} {s.metrics[k]:.3f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
            )
        )
    if "decoder_efficiency" in s.stats:
        lines.append(f"    decoder efficiency: {s.stats['decoder_efficiency']:.3f}")
    lines += _error_lines(s)
    lines.append("SUMMARY " + json.dumps(s.as_dict(), sort_keys=True))
    return "\n".join(lines)


# Causes listed in the console summary (all of them are in _summary.json).
_TOP_CAUSES = 5


def _error_lines(s: JobSummary) -> list[str]:
    """The errored rows by cause, one example message each; and the verdict when failed."""
    if not s.rows_in:
        return [f"FAILED: the {s.files_in} input file(s) hold no rows; no _SUCCESS was written. Check that the "
                "input was written whole (an empty partition, a failed upload)"]
    if not s.rows_errored:
        return []
    lines = [f"    errors by cause ({s.rows_errored} rows, {s.error_rate:.1%}; all in {s.errors_uri}):"]
    if s.files_failed:
        lines.append(f"      {s.files_failed} of {s.files_in} input file(s) failed as a whole "
                     f"({s.file_error_rate:.1%}); their rows past the failure are not counted")
    for cause, entry in list(s.error_causes.items())[:_TOP_CAUSES]:
        example = entry["example"] if len(entry["example"]) <= 300 else entry["example"][:297] + "..."
        where = f"row {entry['example_id']}: " if entry.get("example_id") else ""  # which file / row to look at
        lines.append(f"      {cause}: {entry['rows']} row(s), e.g. {where}{example}")
    if len(s.error_causes) > _TOP_CAUSES:
        lines.append(f"      ... and {len(s.error_causes) - _TOP_CAUSES} more cause(s) in _summary.json")
    if s.failed:
        if s.rows_errored == s.rows_in:
            why, allow = "every row failed", ""
        elif s.error_rate > s.max_error_rate:
            why = f"{s.error_rate:.1%} of rows failed, more than output.max_error_rate={s.max_error_rate:g}"
            allow = " (or raise output.max_error_rate if these rows may fail)"
        else:
            why = f"{s.file_error_rate:.1%} of input files failed as a whole, more than output.max_error_rate=" \
                  f"{s.max_error_rate:g}"
            allow = " (or raise output.max_error_rate if these files may fail)"
        kept = "What succeeded is committed, but no" if s.rows_ok else "No"
        lines.append(f"FAILED: {why}. {kept} _SUCCESS was written. Fix the causes above and rerun with "
                     f"output.mode=overwrite{allow}")
    return lines
