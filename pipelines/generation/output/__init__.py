"""The output of a generation job and its commit protocol, both halves.

    layout     the names under output.uri, the schemas, what is ours (is_own_path, OutputSurvey)
    staging    worker half: a block of rows -> staged Parquet + one record per shard
    committer  driver half: records gather into shards; each complete shard is committed
    store      OutputStore: commit a shard exactly once, modes, resume's cleanup, summary, _SUCCESS
    lease      one driver at a time owns an output
"""

from .committer import Committer, IncompleteShardsError, StagedShard
from .layout import ERRORS_DIR, GALLERY_FILE, SUMMARY_FILE, OutputSurvey, is_own_path, output_schema
from .lease import Lease, LeaseLostError, OutputLeasedError
from .staging import RECORD_SCHEMA, stage_results
from .store import (
    CommitError,
    OutputExistsError,
    OutputStore,
    ShardManifest,
    changed_inputs,
    committed_inputs,
)

__all__ = [
    "ERRORS_DIR",
    "GALLERY_FILE",
    "RECORD_SCHEMA",
    "SUMMARY_FILE",
    "CommitError",
    "Committer",
    "IncompleteShardsError",
    "Lease",
    "LeaseLostError",
    "OutputExistsError",
    "OutputLeasedError",
    "OutputStore",
    "OutputSurvey",
    "ShardManifest",
    "changed_inputs",
    "StagedShard",
    "committed_inputs",
    "is_own_path",
    "output_schema",
    "stage_results",
]
