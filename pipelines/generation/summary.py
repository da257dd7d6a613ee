"""JobSummary: what a run did and the state of its whole output, as run.py builds it and
report.py (the console) and gallery.py (_gallery.html) show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class JobSummary:
    """What a run did, and the state of its whole output (all runs that wrote it).

    `metrics` are the task's (e.g. exact_match over rows with a reference); `stats`
    the model stage's counters for the rows processed in this run (e.g.
    decoder_efficiency); `timings` the phases of this run in seconds. `error_causes`
    counts the errored rows by cause, with one example message each and its row id; `failed` says the
    errored share passed `max_error_rate` (or no row succeeded, or there was none): the
    job wrote what succeeded but no _SUCCESS, and exits 3.
    """

    task: str
    rows_in: int
    rows_ok: int
    rows_errored: int
    seconds: float
    rows_per_s: float
    output_uri: str
    errors_uri: str
    summary_uri: str
    shards_total: int
    shards_committed_before: int
    shards_committed_now: int
    rows_processed_now: int
    files_ignored: int
    run_id: str
    metrics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    gallery_uri: str | None = None
    error_causes: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_error_rate: float = 0.0
    files_in: int = 0
    files_failed: int = 0
    failed: bool = False

    @property
    def error_rate(self) -> float:
        return self.rows_errored / self.rows_in if self.rows_in else 0.0

    @property
    def file_error_rate(self) -> float:
        """Share of input files that failed as a whole (how many rows they held is unknown)."""
        return self.files_failed / self.files_in if self.files_in else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
