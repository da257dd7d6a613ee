"""The commit protocol and the readers, without Ray: staged blocks -> committed shard files."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

import tests.support.generation as gs
from combiner_core import GenerationParams
from pipelines.generation import CommitError, OutputExistsError
from pipelines.generation.output import OutputStore, StagedShard, output_schema, stage_results
from pipelines.generation.tasks import CaptionTask
from pipelines.reading import ReaderOptions, Shard, list_input_files, plan_shards, read_shard

LINEAGE = {"model_uri": "m", "spec_hash": "s" * 64, "params_hash": "p" * 64}
SCHEMA = output_schema(CaptionTask(params=GenerationParams()).output_fields())


def _store(out: str) -> OutputStore:
    return OutputStore(out, schema=SCHEMA)


# Shard keys as reading.Shard makes them (20 hex digits): the output layout's names.
KEY = {label: f"{n:020x}" for n, label in enumerate(["k1", "k2", "k3", "k9"], start=1)}
# Run ids as a run makes them (time and 8 hex digits).
R1, R2 = "20260101T000000-0000000a", "20260101T000001-0000000b"


def _block(label: str, n: int, rows: range, bad: set[int] = frozenset()) -> pa.Table:
    idx = list(rows)
    return pa.table({
        "id": [f"{label}-{i}" for i in idx],
        "shard_key": [KEY[label]] * len(idx),
        "shard_rows": [n] * len(idx),
        "row_index": idx,
        "source_uri": ["f"] * len(idx),
        "source_row": idx,
        "reference": [None] * len(idx),
        "error_stage": ["decode" if i in bad else "" for i in idx],
        "error_cause": ["corrupt_image" if i in bad else "" for i in idx],
        "error_message": ["broken" if i in bad else "" for i in idx],
        "text": [None if i in bad else f"t{i}" for i in idx],
        "score": [None if i in bad else -1.0 for i in idx],
        "texts": [None if i in bad else [f"t{i}"] for i in idx],
        "scores": [None if i in bad else [-1.0] for i in idx],
        "input_tokens": pa.array([None] * len(idx), pa.int64()),
        "output_tokens": [None if i in bad else 2 for i in idx],
        "truncated": pa.array([None] * len(idx), pa.bool_()),
        "model_sha256": ["w"] * len(idx),
    })


def _stage(out: str, block: pa.Table, run_id: str = R1) -> dict:
    rec = stage_results(
        block, output_uri=out, run_id=run_id, schema=SCHEMA, lineage=LINEAGE, produced_at=datetime.now(UTC)
    )
    return rec.to_pylist()[0]


def test_commit_merges_blocks_dedupes_a_retried_block_and_orders_rows(tmp_path):
    out = str(tmp_path / "out")
    store = _store(out)
    store.prepare(mode="error_if_exists", fingerprint="f")
    a = _stage(out, _block("k1", 5, range(0, 3), bad={1}))
    b = _stage(out, _block("k1", 5, range(3, 5)))
    b_again = _stage(out, _block("k1", 5, range(3, 5)))  # a retried block reported twice
    m = store.commit_shard(
        StagedShard(KEY["k1"], ["f"], 5, ok_paths=[b["ok_path"], a["ok_path"], b_again["ok_path"]],
                    error_paths=[a["error_path"]]),
        run_id=R1, commit_number=1,
    )
    assert (m.rows_in, m.rows_ok, m.rows_errored) == (5, 4, 1)
    ok, bad = gs.read_dir(out), gs.read_errors(out)
    assert ok.column("id").to_pylist() == ["k1-0", "k1-2", "k1-3", "k1-4"]
    assert bad.column("id").to_pylist() == ["k1-1"] and bad.column("cause").to_pylist() == ["corrupt_image"]
    assert "row_index" not in ok.column_names and ok.column("texts").to_pylist()[0] == ["t0"]
    assert not (tmp_path / "out" / "_staging" / R1 / KEY["k1"]).exists()


def test_missing_rows_are_never_committed(tmp_path):
    out = str(tmp_path / "out")
    store = _store(out)
    store.prepare(mode="error_if_exists", fingerprint="f")
    a = _stage(out, _block("k2", 4, range(0, 3)))
    with pytest.raises(CommitError, match="not committed"):
        store.commit_shard(StagedShard(KEY["k2"], ["f"], 4, ok_paths=[a["ok_path"]]), run_id=R1, commit_number=1)
    assert store.committed() == {} and gs.read_dir(out).num_rows == 0


def test_resume_removes_uncommitted_files_and_keeps_committed(tmp_path):
    out = str(tmp_path / "out")
    store = _store(out)
    store.prepare(mode="resume", fingerprint="f")
    a = _stage(out, _block("k1", 2, range(2)))
    store.commit_shard(StagedShard(KEY["k1"], ["f1"], 2, ok_paths=[a["ok_path"]]), run_id=R1, commit_number=1)
    # A crash between a data file's move and its manifest: the file is visible, unowned.
    orphan = tmp_path / "out" / f"part-{KEY['k9']}.parquet"
    orphan.write_bytes((tmp_path / "out" / f"part-{KEY['k1']}.parquet").read_bytes())
    _stage(out, _block("k3", 2, range(2)), run_id=R2)  # staged leftovers of a killed run
    assert gs.read_dir(out).num_rows == 4
    committed = _store(out).prepare(mode="resume", fingerprint="f")
    assert set(committed) == {KEY["k1"]} and committed[KEY["k1"]].inputs == ["f1"]
    assert not orphan.exists() and not (tmp_path / "out" / "_staging").exists()
    assert gs.read_dir(out).column("id").to_pylist() == ["k1-0", "k1-1"]
    with pytest.raises(OutputExistsError, match="other inputs"):
        _store(out).prepare(mode="resume", fingerprint="g")
    with pytest.raises(OutputExistsError, match="output.mode=resume"):
        _store(out).prepare(mode="error_if_exists", fingerprint="f")
    assert _store(out).prepare(mode="overwrite", fingerprint="g") == {}
    assert gs.read_dir(out).num_rows == 0


def test_a_committed_file_rewritten_since_is_named_on_resume(tmp_path):
    """A committed tar or JSONL file that grew (or shrank) would never be read again by a
    resume: its manifest keeps the bytes it was read at, and a resume names the change."""
    from pipelines.generation.output import changed_inputs

    out = str(tmp_path / "out")
    store = _store(out)
    store.prepare(mode="resume", fingerprint="f")
    a = _stage(out, _block("k1", 2, range(2)))
    store.commit_shard(StagedShard(KEY["k1"], ["f1", "f2"], 2, ok_paths=[a["ok_path"]], input_bytes=300),
                       run_id=R1, commit_number=1)
    b = _stage(out, _block("k2", 1, range(1)))
    store.commit_shard(StagedShard(KEY["k2"], ["f3"], 1, ok_paths=[b["ok_path"]]), run_id=R1, commit_number=2)
    committed = _store(out).prepare(mode="resume", fingerprint="f")
    assert committed[KEY["k1"]].input_bytes == 300 and committed[KEY["k2"]].input_bytes is None
    assert changed_inputs(committed.values(), {"f1": 100, "f2": 200, "f3": 7}) == []
    changed = changed_inputs(committed.values(), {"f1": 100, "f2": 260, "f3": 7})
    assert changed == [f"f1, f2: 300 byte(s) when committed (run {R1}), 360 now"]
    # a file the listing no longer has is not "changed" here (resume just has less to do)
    assert changed_inputs(committed.values(), {"f1": 100}) == []
    # Shards take their bytes from the listing's sizes; a range of a file is not checked.
    from pipelines.generation.output.committer import _staged

    assert _staged(Shard(files=("f1", "f2"), nbytes=300), 2).input_bytes == 300
    assert _staged(Shard(files=("f1",)), 2).input_bytes is None


def test_listing_filters_and_shards_are_deterministic(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.webp", "_errors/x.png", ".hidden/y.png", "notes.txt"):
        gs.write_bytes(str(tmp_path / name), b"x")
    files, ignored = list_input_files(str(tmp_path), format="images")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.JPG", "b.png", "c.webp"]
    # hidden files are no inputs either, but are said (nothing is passed over in silence)
    assert [f.rsplit("/", 1)[-1] for f in ignored] == ["y.png", "notes.txt"]
    shards = plan_shards(files, format="images", files_per_shard=2)
    assert [len(s.files) for s in shards] == [2, 1]
    assert [s.key for s in shards] == [s.key for s in plan_shards(files, format="images", files_per_shard=2)]
    with pytest.raises(ValueError, match="no such file"):
        list_input_files(str(tmp_path / "nope"), format="images")


def test_listing_gives_sizes_and_read_tasks_group_small_shards(tmp_path):
    """Sizes come with the listing; small shards share a read task (up to 16 MiB or 16
    shards), a large one has a task of its own, and the order of shards is kept."""
    from pipelines.generation.stages import read_groups
    from pipelines.reading import list_inputs

    gs.write_bytes(str(tmp_path / "big.jsonl"), b"x" * (17 * 1024**2))
    for i in range(20):
        gs.write_bytes(str(tmp_path / f"s{i:02d}.jsonl"), b"y" * (i + 1))
    listing = list_inputs(str(tmp_path / "*.jsonl"), format="jsonl")
    assert listing.sizes[listing.files[0]] == 17 * 1024**2 and listing.files[0].endswith("big.jsonl")
    assert [listing.sizes[f] for f in listing.files[1:]] == list(range(1, 21))
    assert list_inputs(str(tmp_path), format="jsonl").sizes == listing.sizes
    shards = plan_shards(listing.files, format="jsonl", sizes=listing.sizes)
    assert [s.nbytes for s in shards[:3]] == [17 * 1024**2, 1, 2]
    groups = [json.loads(g) for g in read_groups(shards, {shards[2].key: [["u", 3, "dup"]]})]
    assert [len(g) for g in groups] == [1, 16, 4]
    assert [e["shard"]["key"] for g in groups for e in g] == [s.key for s in shards]
    assert groups[1][1] == {"shard": {"key": shards[2].key, "files": list(shards[2].files)},
                            "duplicates": [["u", 3, "dup"]]}
    assert Shard.described(groups[1][1]["shard"]) == shards[2]


def test_read_shard_ids_sources_and_read_errors(tmp_path):
    gs.write_jsonl(str(tmp_path / "d.jsonl"), [{"text": "a cat", "id": 7}, {"body": "no text field"}])
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text", id_column="id")
    table = read_shard(Shard(files=(str(tmp_path / "d.jsonl"),)), opts)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["7", "d.jsonl#1"]
    assert rows[0]["payload"] == b"a cat" and rows[0]["error_stage"] == ""
    assert rows[1]["error_cause"] == "missing_column" and "input_column" in rows[1]["error_message"]
    assert {r["shard_rows"] for r in rows} == {2} and [r["row_index"] for r in rows] == [0, 1]
    # A Parquet file without the input column: each of its rows (its footer counts them)
    # is an error row, with its id where the id column is there.
    gs.write_parquet(str(tmp_path / "p.parquet"), [{"img": b"x", "key": "a"}, {"img": b"y", "key": "b"}])
    opts = ReaderOptions(format="parquet", root=str(tmp_path), input_column="image", id_column="key")
    rows = read_shard(Shard(files=(str(tmp_path / "p.parquet"),)), opts).to_pylist()
    assert [(r["id"], r["source_row"], r["error_cause"]) for r in rows] == [("a", 0, "missing_column"),
                                                                           ("b", 1, "missing_column")]
    assert "file-level error" in rows[0]["error_message"] and "none of its 2 rows" in rows[0]["error_message"]
    opts = ReaderOptions(format="parquet", root=str(tmp_path), input_column="image", id_column="nope")
    rows = read_shard(Shard(files=(str(tmp_path / "p.parquet"),)), opts).to_pylist()
    assert [r["id"] for r in rows] == ["p.parquet#0", "p.parquet#1"]
    # A footer that reads over a row group that does not (its page header overwritten):
    # the other row group's 20 rows are read, the broken one's 20 are error rows with
    # their ids, not one row for the file.
    import os

    import pyarrow.parquet as pq

    table = pa.table({"key": [f"r{i}" for i in range(40)], "image": [os.urandom(3000) for _ in range(40)]})
    pq.write_table(table, tmp_path / "torn.parquet", row_group_size=20)
    page = pq.ParquetFile(tmp_path / "torn.parquet").metadata.row_group(1).column(1).data_page_offset
    data = bytearray((tmp_path / "torn.parquet").read_bytes())
    data[page : page + 16] = b"\xff" * 16
    (tmp_path / "torn.parquet").write_bytes(bytes(data))
    opts = ReaderOptions(format="parquet", root=str(tmp_path), input_column="image", id_column="key")
    rows = read_shard(Shard(files=(str(tmp_path / "torn.parquet"),)), opts).to_pylist()
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(40)]
    assert [r["error_cause"] for r in rows] == [""] * 20 + ["unreadable_file"] * 20
    assert "row group 1 of" in rows[20]["error_message"] and "20 row(s) from row 20 on are lost" in rows[20]["error_message"]
    # A file that is not Parquet at all: one row, its id '<file>#file', "file" in its message.
    gs.write_bytes(str(tmp_path / "q.parquet"), b"not parquet")
    rows = read_shard(Shard(files=(str(tmp_path / "q.parquet"),)), opts).to_pylist()
    assert [(r["id"], r["source_row"], r["error_cause"]) for r in rows] == [("q.parquet#file", -1, "unreadable_file")]
    assert rows[0]["error_message"].startswith("file-level error: cannot read the file")


def test_image_folder_references_come_from_its_captions_file(tmp_path):
    """Generation (references) and fine-tuning (targets) read an image folder the same way."""
    from pipelines.finetune.data import plan_pairs
    from pipelines.finetune.spec import DataSource
    from pipelines.reading import count_rows

    for name in ("a.png", "sub/b.png", "c.png"):
        gs.write_bytes(str(tmp_path / name), gs.image_bytes(len(name)))
    gs.write_jsonl(str(tmp_path / "captions.jsonl"), [{"file": "a.png", "caption": "red"},
                                                      {"file": "sub/b.png", "caption": "blue"}])
    opts = ReaderOptions(format="images", root=str(tmp_path), captions_file=str(tmp_path / "captions.jsonl"))
    files, _ = list_input_files(str(tmp_path), format="images")
    rows = read_shard(Shard(files=tuple(files)), opts).to_pylist()
    assert {r["id"]: r["reference"] for r in rows} == {"a.png": "red", "c.png": None, "sub/b.png": "blue"}
    assert count_rows(files, opts) == 3
    pairs = plan_pairs(DataSource(uri=str(tmp_path), format="images"), key="data.train")
    assert pairs.rows == 3 and pairs.reader.captions_file == str(tmp_path / "captions.jsonl") and len(pairs.shards) == 1
    gs.write_bytes(str(tmp_path / "captions.jsonl"), b'{"file": "a.png"}\nnot json\n')
    from pipelines.finetune.data import DataSourceError

    with pytest.raises(DataSourceError, match="data.train: captions_file .* line 2"):
        plan_pairs(DataSource(uri=str(tmp_path), format="images"), key="data.train")


def test_duplicate_ids_first_occurrence_wins_and_committed_rows_rank_first():
    from pipelines.reading import find_duplicates

    def ids(uri: str, *pairs: tuple[str, int]) -> pa.Table:
        return pa.table({"id": [p[0] for p in pairs], "source_uri": [uri] * len(pairs),
                         "source_row": [p[1] for p in pairs]})

    found = find_duplicates([(1, ids("b", ("x", 0), ("y", 1))), (1, ids("a", ("x", 4), ("x", 5), ("z", -1)))])
    assert set(found) == {("b", 0), ("a", 5)} and "first appears in a row 4" in found[("b", 0)]
    # A committed shard (rank 0) keeps its row even when a new file sorts before it.
    found = find_duplicates([(1, ids("a", ("x", 0))), (0, ids("z", ("x", 9)))])
    assert set(found) == {("a", 0)} and "z row 9" in found[("a", 0)]


def test_lease_refuses_a_live_owner_and_takes_over_a_dead_or_stale_one(tmp_path, monkeypatch):
    import json
    import os
    import socket

    from fsspec.implementations.local import LocalFileSystem

    from pipelines.generation.output import Lease, LeaseLostError, OutputLeasedError

    root = str(tmp_path)
    lease_path = tmp_path / "_lease.json"

    def foreign(**fields) -> None:
        record = {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(),
                  "started": "2026-01-01T00:00:00+00:00", "ttl_s": 60.0, **fields}
        lease_path.write_text(json.dumps(record))

    fs = LocalFileSystem()
    foreign()  # this very process, alive, on this host
    with pytest.raises(OutputLeasedError, match="being written by run other-run"):
        Lease(fs, root, root, run_id="me").acquire()
    foreign(host="elsewhere")  # another host, renewed just now
    with pytest.raises(OutputLeasedError, match="other-run"):
        Lease(fs, root, root, run_id="me").acquire()
    old = lease_path.stat().st_mtime - 120  # not renewed for two minutes: expired
    os.utime(lease_path, (old, old))
    lease = Lease(fs, root, root, run_id="me")
    lease.acquire()
    assert json.loads(lease_path.read_text())["run_id"] == "me"
    lease.release()
    assert not lease_path.exists()
    foreign(pid=2**22 + 17)  # a pid that does not run here: its driver was killed
    lease = Lease(fs, root, root, run_id="me")
    lease.acquire()
    foreign(host="elsewhere")  # someone took it over while we stalled
    with pytest.raises(LeaseLostError, match="lost its lease"):
        lease.check()
    lease.release()
    assert json.loads(lease_path.read_text())["run_id"] == "other-run"  # not ours to delete


def test_model_stage_failures_get_a_cause() -> None:
    import torch

    from combiner_core.errors import TextInputError
    from pipelines.generation.stages import model_error_cause

    assert model_error_cause(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == "out_of_memory"
    assert model_error_cause(RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")) == \
        "numeric_error"
    assert model_error_cause(TextInputError("no tokens", cause="empty_text")) == "empty_text"
    assert model_error_cause(RuntimeError("see the information above")) == "model_error"
    assert model_error_cause(IndexError("index out of range in self")) == "model_error"
