"""Large Parquet files as several shards, read as streams, without Ray: range planning,
bounded tables, a corrupt row group midway, and the commit and resume of ranges."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.support.generation as gs
from combiner_core import GenerationParams
from pipelines.generation.output import (
    Committer,
    Lease,
    OutputStore,
    ShardManifest,
    committed_inputs,
    output_schema,
    stage_results,
)
from pipelines.generation.tasks import CaptionTask
from pipelines.reading import (
    CommittedGroups,
    InputChangedError,
    ReaderOptions,
    Shard,
    duplicate_rows,
    iter_shard,
    list_inputs,
    plan_shards,
    read_shard,
)
from pipelines.reading.row_groups import pack_row_groups
from pipelines.reading.rows import TABLE_BYTES

SCHEMA = output_schema(CaptionTask(params=GenerationParams()).output_fields())
LINEAGE = {"model_uri": "m", "spec_hash": "s" * 64, "params_hash": "p" * 64}


def _write(path, n: int, *, row_group: int, payload: int = 100, seed: int = 0) -> str:
    """A Parquet file of n rows (id 'r<i>', `payload` random bytes each) in row groups of
    `row_group` rows; no dictionary for the payloads, as image columns are written."""
    rows = pa.table({"key": [f"r{i}" for i in range(n)],
                     "image": [os.urandom(payload) for _ in range(n)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path, row_group_size=row_group, use_dictionary=["key"])
    return str(path)


def _opts(root, **kw) -> ReaderOptions:
    return ReaderOptions(format="parquet", root=str(root), input_column="image", id_column="key", **kw)


def _group_bytes(uri: str) -> list[int]:
    md = pq.ParquetFile(uri).metadata
    return [sum(md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns))
            for g in range(md.num_row_groups)]


def test_row_groups_pack_greedily_one_group_at_least_and_resume_the_same_ranges():
    assert pack_row_groups([10, 10, 10, 10, 10], 25) == [(0, 2), (2, 4), (4, 5)]
    assert pack_row_groups([40, 5, 5, 30, 1], 25) == [(0, 1), (1, 3), (3, 4), (4, 5)]  # too big: alone
    assert pack_row_groups([], 25) == []
    # Committed groups are left out; the runs between them pack on the same edges.
    first = pack_row_groups([10] * 9, 25)
    assert first == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    done = {2, 3, 6, 7}
    assert pack_row_groups([10] * 9, 25, skip=done) == [r for r in first if not done & set(range(*r))]


def test_a_large_file_splits_into_contiguous_ranges_with_stable_keys(tmp_path):
    """Ranges cover the file once, in order, each up to the target (one group at least);
    source rows are counted from the file's start; keys are the same in every run and
    differ from each other and from the whole file's, which a small file keeps."""
    big = _write(tmp_path / "in" / "big.parquet", 60, row_group=10, payload=1000)
    small = _write(tmp_path / "in" / "small.parquet", 5, row_group=10)
    listing = list_inputs(str(tmp_path / "in"), format="parquet")
    sizes = _group_bytes(big)
    target = sizes[0] * 2 + 10  # two row groups per shard
    shards = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=target)
    assert [s.files for s in shards] == [(big,)] * 3 + [(small,)]
    assert [s.row_groups for s in shards[:3]] == [(0, 2), (2, 4), (4, 6)]
    assert [s.rows for s in shards[:3]] == [(0, 20), (20, 40), (40, 60)]
    assert {s.file_row_groups for s in shards[:3]} == {6} and shards[0].nbytes == sum(sizes[:2])
    assert shards[3].row_groups is None and shards[3].key == Shard(files=(small,)).key
    again = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=target)
    assert [s.key for s in again] == [s.key for s in shards]
    assert len({s.key for s in shards} | {Shard(files=(big,)).key}) == 5
    # The whole file fits: one shard, the key it had before files were split.
    (whole,) = plan_shards([big], format="parquet", sizes=listing.sizes)
    assert whole.row_groups is None and whole.key == Shard(files=(big,)).key
    rows = [r for s in shards[:3] for r in read_shard(s, _opts(tmp_path / "in")).to_pylist()]
    assert [(r["id"], r["source_row"]) for r in rows] == [(f"r{i}", i) for i in range(60)]
    assert {r["error_cause"] for r in rows} == {""}


def test_footers_are_read_only_for_files_larger_than_a_shard(tmp_path):
    """A file the listing says fits one shard is not opened (10^4 small files plan from
    the listing alone); a large one whose footer does not read is one shard, whose read
    reports it; a single large row group is one shard, whole."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "fake.parquet").write_bytes(b"x" * 100)  # not Parquet: never opened
    broken = tmp_path / "in" / "broken.parquet"
    broken.write_bytes(b"y" * 5000)
    one = _write(tmp_path / "in" / "one.parquet", 30, row_group=100, payload=200)
    listing = list_inputs(str(tmp_path / "in"), format="parquet")
    shards = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=1000)
    assert [(s.files[0].rsplit("/", 1)[-1], s.row_groups) for s in shards] == [
        ("broken.parquet", None), ("fake.parquet", None), ("one.parquet", None)]
    assert shards[2].key == Shard(files=(one,)).key
    (row,) = read_shard(shards[0], _opts(tmp_path / "in")).to_pylist()
    assert (row["id"], row["error_cause"]) == ("broken.parquet#file", "unreadable_file")


def test_a_shard_streams_in_bounded_tables_and_carries_its_count_on_the_last(tmp_path):
    """24 MiB in 3 row groups: tables of at most TABLE_BYTES plus one record batch (8
    MiB) of payload, rows numbered across tables, shard_rows -1 until the last table;
    read_shard is their concatenation with the count on every row."""
    uri = _write(tmp_path / "a.parquet", 48, row_group=16, payload=512 * 1024)
    shard = Shard(files=(uri,))
    tables = list(iter_shard(shard, _opts(tmp_path)))
    sizes = [sum(len(p) for p in t.column("payload").to_pylist()) for t in tables]
    assert len(tables) >= 2 and max(sizes) <= TABLE_BYTES + 8 * 1024**2, sizes
    assert [t.column("shard_rows").to_pylist() for t in tables[:-1]] == [[-1] * t.num_rows for t in tables[:-1]]
    assert set(tables[-1].column("shard_rows").to_pylist()) == {48}
    assert [i for t in tables for i in t.column("row_index").to_pylist()] == list(range(48))
    whole = read_shard(shard, _opts(tmp_path))
    assert whole.column("id").to_pylist() == [f"r{i}" for i in range(48)]
    assert set(whole.column("shard_rows").to_pylist()) == {48}
    assert read_shard(Shard(files=(uri,), row_groups=(2, 3), file_row_groups=3), _opts(tmp_path)).num_rows == 16


def _corrupt(uri: str, group: int, at: float) -> None:
    """Overwrite bytes `at` (a fraction) of the way into row group `group`'s image column."""
    col = pq.ParquetFile(uri).metadata.row_group(group).column(1)
    data = bytearray(open(uri, "rb").read())
    pos = col.data_page_offset + int(col.total_compressed_size * at)
    data[pos : pos + 64] = b"\xff" * 64
    with open(uri, "wb") as f:
        f.write(bytes(data))


def test_a_corrupt_row_group_midway_keeps_the_rows_before_it_and_reports_the_rest(tmp_path):
    """Row group 1 of 3 (20 rows of 512 KiB, read 15 rows a batch) breaks three quarters
    in: its first batch is kept, its other rows are error rows with their ids, and row
    group 2 is read; no row is dropped or repeated, in a range shard as in the whole file."""
    uri = _write(tmp_path / "c.parquet", 60, row_group=20, payload=512 * 1024)
    _corrupt(uri, 1, 0.75)
    for shard in (Shard(files=(uri,)), Shard(files=(uri,), row_groups=(1, 3), file_row_groups=3, rows=(20, 60))):
        rows = read_shard(shard, _opts(tmp_path)).to_pylist()
        first = shard.rows[0] if shard.rows else 0
        assert [(r["id"], r["source_row"]) for r in rows] == [(f"r{i}", i) for i in range(first, 60)]
        bad = [r["source_row"] for r in rows if r["error_cause"]]
        assert bad and bad == list(range(bad[0], 40)) and 20 < bad[0] < 40, bad
        assert {r["error_cause"] for r in rows if r["error_cause"]} == {"unreadable_file"}
        message = next(r["error_message"] for r in rows if r["error_cause"])
        assert f"row group 1 of {uri}" in message and f"from row {bad[0]} on are lost" in message
        assert all(r["payload"] for r in rows if not r["error_cause"])


def test_a_missing_column_or_a_vanished_file_makes_error_rows_of_the_range_only(tmp_path):
    uri = _write(tmp_path / "m.parquet", 30, row_group=10)
    shard = Shard(files=(uri,), row_groups=(1, 2), file_row_groups=3, rows=(10, 20))
    rows = read_shard(shard, _opts(tmp_path, reference_column="caption")).to_pylist()
    assert [(r["id"], r["source_row"], r["error_cause"]) for r in rows] == [
        (f"r{i}", i, "missing_column") for i in range(10, 20)]
    # The file changed (or went) after the driver planned it: the range's rows, counted
    # by the driver, are error rows; not one row for the file, and not the whole file.
    pq.write_table(pa.table({"key": ["x"], "image": [b"y"]}), uri)
    rows = read_shard(shard, _opts(tmp_path)).to_pylist()
    assert [(r["id"], r["source_row"], r["error_cause"]) for r in rows] == [
        (f"m.parquet#{i}", i, "unreadable_file") for i in range(10, 20)]
    assert "changed since the job planned" in rows[0]["error_message"]
    os.remove(uri)
    assert read_shard(shard, _opts(tmp_path)).num_rows == 10


def test_duplicate_ids_land_in_the_range_that_reads_them(tmp_path):
    """Ids repeat across ranges of one file: each later row goes to the shard of its range;
    a committed range ranks first."""
    rows = pa.table({"key": [f"r{i % 25}" for i in range(40)], "image": [b"x"] * 40})
    pq.write_table(rows, tmp_path / "d.parquet", row_group_size=10)
    uri = str(tmp_path / "d.parquet")
    shards = plan_shards([uri], format="parquet", shard_bytes=1)
    assert [s.row_groups for s in shards] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    found = duplicate_rows(_opts(tmp_path), done=[], todo=shards, committed_duplicates=set)
    assert {k: sorted(r for _, r, _ in v) for k, v in found.items()} == {
        shards[2].key: [25, 26, 27, 28, 29], shards[3].key: list(range(30, 40))}
    # Range 3 committed (rows 30-39, ids r5-r14, kept): rows 5-14 of ranges 0 and 1 are
    # their duplicates now.
    found = duplicate_rows(_opts(tmp_path), done=[shards[3]], todo=shards[:3], committed_duplicates=set)
    assert {k: sorted(r for _, r, _ in v) for k, v in found.items()} == {
        shards[0].key: [5, 6, 7, 8, 9], shards[1].key: [10, 11, 12, 13, 14], shards[2].key: [25, 26, 27, 28, 29]}


def _processed(rows: pa.Table) -> pa.Table:
    """The reader's rows as the model stage returns them (a caption per row)."""
    n = rows.num_rows
    ok = [not c for c in rows.column("error_cause").to_pylist()]
    return rows.drop_columns(["payload"]).append_column("text", pa.array([f"t{i}" if k else None for i, k in enumerate(ok)])) \
        .append_column("score", pa.array([-1.0 if k else None for k in ok])) \
        .append_column("texts", pa.array([["t"] if k else None for k in ok])) \
        .append_column("scores", pa.array([[-1.0] if k else None for k in ok])) \
        .append_column("input_tokens", pa.array([None] * n, pa.int64())) \
        .append_column("output_tokens", pa.array([2 if k else None for k in ok], pa.int64())) \
        .append_column("truncated", pa.array([None] * n, pa.bool_())) \
        .append_column("model_sha256", pa.array(["w"] * n))


def _first(record: dict) -> bool:
    """Whether a staging record holds its shard's row 0."""
    path = record["ok_path"] or record["error_path"]
    return 0 in pq.read_table(path, columns=["row_index"]).column(0).to_pylist()


def _run(out: str, shards: list[Shard], opts: ReaderOptions, *, run_id: str, stop_after: int | None = None) -> int:
    """Stage every table of `shards` as its own block, then hand the records to a
    Committer, last tables first (a shard must wait for its early tables); stops (as a
    killed driver would) after `stop_after` commits. Returns the commits made."""
    store = OutputStore(out, schema=SCHEMA)
    lease = Lease(store.fs, store.root, store.uri, run_id=run_id)
    lease.acquire()
    try:
        store.prepare(mode="resume", fingerprint="f")
        records = []
        for s in shards:
            for table in iter_shard(s, opts):
                records += stage_results(_processed(table), output_uri=out, run_id=run_id, schema=SCHEMA,
                                         lineage=LINEAGE, produced_at=datetime.now(UTC)).to_pylist()
        committer = Committer(store, lease, shards, run_id=run_id)
        for rec in reversed(records):
            before, first = committer.commits, _first(rec)
            committer.take([rec])
            # a shard commits on the record of its first table (row 0, count -1), the last to come here
            assert (committer.commits > before) == (first and rec["shard_rows"] == -1), rec
            if stop_after is not None and committer.commits == stop_after:
                return committer.commits
        committer.finish()
        return committer.commits
    finally:
        lease.release()


def test_ranges_commit_apart_and_a_resume_plans_only_the_ranges_left(tmp_path, monkeypatch):
    """A file in 4 ranges, each read as 5 tables: two ranges commit, each once all its
    tables are staged, then the driver stops. The manifests name their ranges; the file
    is not done; a resume plans the other two ranges (the same keys as the first plan)
    and the output holds every row once. Whole-file manifests (no range, as written
    before files were split) stay as they were."""
    monkeypatch.setattr("pipelines.reading.rows.TABLE_ROWS", 4)
    uri = _write(tmp_path / "in" / "f.parquet", 80, row_group=10, payload=64 * 1024)
    listing = list_inputs(str(tmp_path / "in"), format="parquet")
    target = _group_bytes(uri)[0] * 2 + 100
    plan = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=target)
    assert len(plan) == 4
    out = str(tmp_path / "out")
    opts = _opts(tmp_path / "in")
    assert _run(out, plan, opts, run_id="20260101T000000-0000000a", stop_after=2) == 2
    manifests = OutputStore(out, schema=SCHEMA).committed()
    assert sorted(m.row_groups for m in manifests.values()) == [[4, 6, 8], [6, 8, 8]]
    done, partly = committed_inputs(manifests.values())
    assert done == set() and partly == {uri: CommittedGroups(of=8, groups=frozenset({4, 5, 6, 7}))}
    rest = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=target, committed=partly)
    assert [s.key for s in rest] == [s.key for s in plan[:2]]
    # Another shard size on resume still plans only what is left (row groups, not keys, count).
    assert [s.row_groups for s in plan_shards([uri], format="parquet", shard_bytes=1, committed=partly)] == [
        (0, 1), (1, 2), (2, 3), (3, 4)]
    assert _run(out, rest, opts, run_id="20260101T000001-0000000b") == 2
    manifests = OutputStore(out, schema=SCHEMA).committed()
    assert committed_inputs(manifests.values()) == ({uri}, {})
    ids = gs.read_dir(out).column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(80)) and len(ids) == 80
    assert sum(m.rows_in for m in manifests.values()) == 80
    with open(tmp_path / "out" / "_commits" / f"{plan[0].key}.json") as f:
        assert json.load(f)["row_groups"] == [0, 2, 8]
    # A manifest of whole files is written and read as before (no row_groups key).
    whole = ShardManifest(shard_key="a" * 20, inputs=["x"], rows_in=1, rows_ok=1, rows_errored=0, data_files=[],
                          error_files=[], run_id="r", committed_at="t")
    assert "row_groups" not in whole.to_json() and ShardManifest.from_json(whole.to_json()) == whole
    assert committed_inputs([whole]) == ({"x"}, {})


def test_a_partly_committed_file_that_changed_is_refused(tmp_path):
    uri = _write(tmp_path / "f.parquet", 30, row_group=10)
    with pytest.raises(InputChangedError, match="had 4 row group.*has 3 now.*output.mode=overwrite"):
        plan_shards([uri], format="parquet", committed={uri: CommittedGroups(of=4, groups=frozenset({0}))})
    # A partly committed file whose footer no longer reads: its other ranges are still
    # planned (their reads report it), never the file whole.
    (tmp_path / "g.parquet").write_bytes(b"gone")
    shards = plan_shards([str(tmp_path / "g.parquet")], format="parquet", shard_bytes=1,
                         committed={str(tmp_path / "g.parquet"): CommittedGroups(of=4, groups=frozenset({1}))})
    assert [s.row_groups for s in shards] == [(0, 1), (2, 4)]
    rows = read_shard(shards[1], _opts(tmp_path)).to_pylist()
    assert [(r["id"], r["source_row"]) for r in rows] == [("g.parquet#file:row_groups=2-3", -1)]


def test_loose_files_shard_by_count_and_by_bytes():
    """Image files: at most files_per_shard and shard_bytes per shard, one file at least;
    small images group as before (the same keys)."""
    files = [f"/in/{i}.jpg" for i in range(10)]
    small = {f: 100_000 for f in files}
    assert [len(s.files) for s in plan_shards(files, format="images", files_per_shard=4, sizes=small)] == [4, 4, 2]
    photos = {f: 5 * 1024**2 for f in files}
    shards = plan_shards(files, format="images", files_per_shard=256, sizes=photos, shard_bytes=16 * 1024**2)
    assert [len(s.files) for s in shards] == [3, 3, 3, 1] and shards[0].nbytes == 15 * 1024**2
    huge = {f: 100 * 1024**2 for f in files}
    assert [len(s.files) for s in plan_shards(files, format="images", files_per_shard=256, sizes=huge)] == [1] * 10
    assert [s.key for s in plan_shards(files, format="images", files_per_shard=4)] == [
        Shard(files=tuple(files[i : i + 4])).key for i in (0, 4, 8)]


def test_the_read_stage_preprocesses_ranges_in_chunks_bounded_by_rows_and_bytes(tmp_path, monkeypatch):
    """read_and_preprocess over a file split in 3 ranges: every row once, in order, with
    its range's key; chunks of batch_size rows, or fewer when their payloads pass the
    chunk's bytes (then the model stage batches them back)."""
    import numpy as np

    from pipelines import validate_spec
    from pipelines.generation import CaptionJobSpec, build_plan
    from pipelines.generation import stages as stages_module
    from pipelines.generation.stages import read_and_preprocess, read_groups

    model = gs.save(gs.captioner(), str(tmp_path / "captioner"))
    images = [gs.image_bytes(i) for i in range(30)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"key": [f"r{i}" for i in range(30)], "image": images}), tmp_path / "in" / "a.parquet",
                   row_group_size=10)
    spec = gs.caption_spec(str(tmp_path / "in"), str(tmp_path / "out"), model, input={
        "uri": str(tmp_path / "in"), "format": "parquet", "input_column": "image", "id_column": "key",
        "shard_mib": 1e-6})
    plan = build_plan(validate_spec(CaptionJobSpec, spec, source="test"))
    listing = list_inputs(plan.reader.root, format="parquet")
    shards = plan_shards(listing.files, format="parquet", sizes=listing.sizes, shard_bytes=plan.shard_bytes)
    assert [s.row_groups for s in shards] == [(0, 1), (1, 2), (2, 3)] and plan.batch_size == 4
    groups = np.array(read_groups(shards, {}), dtype=object)
    chunks = list(read_and_preprocess({"shards": groups}, plan=plan))
    assert [len(c["id"]) for c in chunks] == [4] * 7 + [2]  # a chunk spans ranges
    assert [i for c in chunks for i in c["id"]] == [f"r{i}" for i in range(30)]
    assert [k for c in chunks for k in c["shard_key"]] == [s.key for s in shards for _ in range(10)]
    assert all(c["pixel_values"].shape[0] == len(c["id"]) for c in chunks)
    # Payloads over the chunk's bytes: chunks of as many rows as fit (one at least).
    monkeypatch.setattr(stages_module, "_CHUNK_BYTES", 2 * max(len(b) for b in images) + 1)
    chunks = list(read_and_preprocess({"shards": groups}, plan=plan))
    assert len(chunks) >= 15 and max(len(c["id"]) for c in chunks) <= 2
    assert [i for c in chunks for i in c["id"]] == [f"r{i}" for i in range(30)]


def test_image_files_are_handed_on_a_few_at_a_time(tmp_path, monkeypatch):
    """A shard of image files leaves in tables as its files are read (payload bytes or
    rows bound them), not as one table of the shard."""
    monkeypatch.setattr("pipelines.reading.rows.TABLE_BYTES", 3000)
    names = [f"{i:02d}.bin.jpg" for i in range(10)]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(1000))
    shard = Shard(files=tuple(str(tmp_path / n) for n in names))
    tables = list(iter_shard(shard, ReaderOptions(format="images", root=str(tmp_path))))
    assert [t.num_rows for t in tables] == [3, 3, 3, 1]
    assert [i for t in tables for i in t.column("id").to_pylist()] == names
