"""The driver half of the commit protocol: staging records gather into shards, and each
shard is committed (store.py) once all its rows are staged.

Records come from finished staging tasks only (staging.py), in any order and from any
worker; a shard may be spread over many of them. The driver checks its lease before
each commit, so a driver that lost the output commits nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ... import faults
from ...reading import Shard
from ..counters import ModelCounters
from .lease import Lease
from .store import OutputStore, ShardManifest


@dataclass
class StagedShard:
    """A shard's staged results as the driver gathers them from the staging records.

    Complete when `rows` reaches `shard_rows`, which one of its records says (the one of
    the block holding the shard's last rows; -1 until then: shards are read as streams);
    then OutputStore.commit_shard makes it output.
    """

    key: str
    inputs: list[str]
    shard_rows: int
    rows: int = 0
    # [start, stop, of]: the range of row groups of its one Parquet file, and how many
    # the file has (None: its input files whole).
    row_groups: list[int] | None = None
    # Bytes of its whole input files as listed (None: a range of a file, or sizes unknown).
    input_bytes: int | None = None
    ok_paths: list[str] = field(default_factory=list)
    error_paths: list[str] = field(default_factory=list)
    counters: ModelCounters = field(default_factory=ModelCounters)

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one RECORD_SCHEMA record (a block's part of this shard)."""
        self.rows += record["rows"]
        self.shard_rows = max(self.shard_rows, record["shard_rows"])
        if record["ok_path"]:
            self.ok_paths.append(record["ok_path"])
        if record["error_path"]:
            self.error_paths.append(record["error_path"])
        self.counters = self.counters + ModelCounters.from_json(record.get("stats"))

    @property
    def complete(self) -> bool:
        return self.shard_rows >= 0 and self.rows >= self.shard_rows


def _staged(shard: Shard, shard_rows: int) -> StagedShard:
    groups = None if shard.row_groups is None else [*shard.row_groups, shard.file_row_groups]
    input_bytes = shard.nbytes if shard.row_groups is None and shard.nbytes > 0 else None
    return StagedShard(shard.key, list(shard.files), shard_rows, row_groups=groups, input_bytes=input_bytes)


class IncompleteShardsError(RuntimeError):
    """The pipeline ended with shards that got only part of their rows (nothing of them committed)."""


class Committer:
    """Commits the shards of one run as their staging records arrive.

    Attributes (after `finish`): commits (shards committed by this run, empty ones
    included), rows (rows committed), counters (the model stage's, over the committed
    shards), seconds (spent committing).
    """

    def __init__(
        self,
        store: OutputStore,
        lease: Lease,
        shards: Iterable[Shard],
        *,
        run_id: str,
        metric_sums: Callable[[pa.Table], dict[str, float]] | None = None,
        on_commit: Callable[[ShardManifest], None] | None = None,
    ) -> None:
        self.store, self.lease, self.run_id = store, lease, run_id
        self.metric_sums, self.on_commit = metric_sums, on_commit
        self._todo = {s.key: s for s in shards}
        self._pending: dict[str, StagedShard] = {}
        self.commits = self.rows = 0
        self.counters = ModelCounters()
        self.seconds = 0.0

    def take(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Gather RECORD_SCHEMA records; commit every shard they complete."""
        for rec in records:
            key = rec["shard_key"]
            staged = self._pending.get(key)
            if staged is None:
                staged = self._pending[key] = _staged(self._todo[key], rec["shard_rows"])
            staged.add(rec)
            if staged.complete:
                del self._pending[key]
                self._commit(staged, metric_sums=self.metric_sums)

    def finish(self) -> None:
        """After the last record: refuse a run that left shards half staged, and commit the
        shards whose files hold no rows (an empty JSONL file yields no block), so a resume
        does not list them again."""
        if self._pending:
            raise IncompleteShardsError(
                f"Ray Data finished but {len(self._pending)} shard(s) got only part of their rows "
                f"({sorted(self._pending)[:3]}...); nothing of them was committed. Rerun with output.mode=resume"
            )
        for shard in list(self._todo.values()):
            self._commit(_staged(shard, 0), metric_sums=None, notify=False)

    def _commit(self, staged: StagedShard, *, metric_sums: Callable[[pa.Table], dict[str, float]] | None,
                notify: bool = True) -> None:
        t = time.time()
        self.lease.check()
        self.commits += 1
        manifest = self.store.commit_shard(staged, run_id=self.run_id, commit_number=self.commits,
                                           metric_sums=metric_sums)
        self.seconds += time.time() - t
        self.rows += manifest.rows_in
        self.counters = self.counters + staged.counters
        del self._todo[staged.key]
        if notify:
            faults.maybe_kill("driver_after_commit", self.commits)
            if self.on_commit is not None:
                self.on_commit(manifest)
