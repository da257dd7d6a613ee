"""The duplicate-id pass at scale: ids held as hashes and packed positions (id_index),
candidates confirmed against the real ids (duplicates.find_duplicates)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import pipelines.reading.duplicates as duplicates
import pipelines.reading.id_index as id_index
from pipelines.reading import IdPassLimitError, InputChangedError, find_duplicates
from pipelines.reading.id_index import IdIndex, hash_ids, pack, unpack


def ids(uri: str | list[str], *pairs: tuple[str | None, int]) -> pa.Table:
    uris = uri if isinstance(uri, list) else [uri] * len(pairs)
    return pa.table({"id": pa.array([p[0] for p in pairs], pa.string()), "source_uri": uris,
                     "source_row": pa.array([p[1] for p in pairs], pa.int64())})


def reference(tables: list[tuple[int, pa.Table]]) -> dict[tuple[str, int], str]:
    """The pass as it was (every id a str key of a dict), for comparison."""
    first: dict = {}
    later = []
    for rank, table in tables:
        for rid, uri, row in zip(*(table.column(c).to_pylist() for c in ("id", "source_uri", "source_row")), strict=True):
            if row < 0:
                continue
            pos = (rank, uri, row)
            seen = first.get(rid)
            if seen is None:
                first[rid] = pos
            elif pos < seen:
                later.append((rid, seen))
                first[rid] = pos
            else:
                later.append((rid, pos))
    return {(pos[1], pos[2]): f"id {rid!r} first appears in {first[rid][1]} row {first[rid][2]}, which is kept; "
            "this later row is not processed" for rid, pos in later}


def weak(mask: int):
    """A hash that collides on purpose: only `mask`'s bits of the real one."""
    return lambda a: hash_ids(a) & np.uint64(mask)


def test_forced_hash_collisions_are_not_duplicates_but_true_duplicates_among_them_are():
    tables = [(1, ids("f", ("a", 0), ("b", 1), ("c", 2), ("b", 3), ("a", 4), ("d", 5)))]
    found = find_duplicates(tables, hash_fn=lambda a: np.zeros(len(a), np.uint64))  # one collision group
    assert found == {
        ("f", 3): "id 'b' first appears in f row 1, which is kept; this later row is not processed",
        ("f", 4): "id 'a' first appears in f row 0, which is kept; this later row is not processed",
    }
    assert find_duplicates([(1, ids("f", ("a", 0), ("b", 1), ("c", 2)))], hash_fn=weak(0)) == {}


def test_hash_collisions_or_not_the_result_is_the_one_of_a_dict_of_ids(monkeypatch):
    """Random inputs (ranks, files split over tables and mixed in one, file-level error rows,
    nulls) give what the dict of ids gave, with a real hash, a weak one, and blocks and
    buckets small enough that each holds a few rows."""
    monkeypatch.setattr(id_index, "_BLOCK_ROWS", 7)
    monkeypatch.setattr(id_index, "_BUCKET_ROWS", 5)
    compared = 0
    for seed in range(30):
        rnd = random.Random(seed)
        tables = []
        for _ in range(rnd.randint(1, 8)):
            n = rnd.randint(0, 40)
            uris = [rnd.choice(["s3://b/z.jsonl", "s3://b/a.jsonl", "s3://b/a.jsonl.1", "m"]) for _ in range(n)]
            pairs = [(rnd.choice([f"id-{rnd.randint(0, 30)}", "", None, "é" * rnd.randint(1, 12)]),
                      rnd.randint(-1, 10**6)) for _ in range(n)]
            tables.append((rnd.choice([0, 1, 1, 2]), ids(uris, *pairs)))
        want = reference(tables)
        for fn in (hash_ids, weak(3), weak(0)):
            assert find_duplicates(tables, hash_fn=fn) == want, seed
        compared += len(want)
    assert compared > 300  # duplicates were there to find


def test_committed_rows_rank_first_then_uri_then_row():
    found = find_duplicates([(1, ids("a", ("x", 0), ("y", 7))), (0, ids("z", ("x", 9), ("y", 3))),
                             (1, ids("b", ("y", 1)))])
    assert found == {
        ("a", 0): "id 'x' first appears in z row 9, which is kept; this later row is not processed",
        ("a", 7): "id 'y' first appears in z row 3, which is kept; this later row is not processed",
        ("b", 1): "id 'y' first appears in z row 3, which is kept; this later row is not processed",
    }
    # within a rank, the uri orders (as str compares), whatever order the tables come in
    found = find_duplicates([(1, ids("s3://x/b", ("k", 0))), (1, ids("s3://x/a", ("k", 5))),
                             (1, ids("s3://x/a", ("k", 2)))])
    assert set(found) == {("s3://x/b", 0), ("s3://x/a", 5)}
    assert all("s3://x/a row 2" in why for why in found.values())


def test_one_file_over_tables_and_files_mixed_in_a_table():
    found = find_duplicates([(1, ids(["b", "a", "b"], ("k", 4), ("k", 3), ("k", 1))), (1, ids("a", ("k", 0)))])
    assert set(found) == {("b", 4), ("b", 1), ("a", 3)} and all("in a row 0," in why for why in found.values())


def test_file_level_error_rows_are_no_rows():
    """source_row < 0 is a file that could not be read: its id (a '<file>#file' one, or a
    repeated one) neither claims nor repeats an id."""
    found = find_duplicates([(1, ids("a", ("x", -1), ("x", 2), ("x", -1))), (0, ids("z", ("x", -1)))])
    assert found == {}
    found = find_duplicates([(1, ids("a", ("x", -1), ("x", 2), ("x", 3)))])
    assert list(found) == [("a", 3)] and "in a row 2," in found[("a", 3)]


def test_the_index_holds_16_bytes_a_row(monkeypatch):
    monkeypatch.setattr(id_index, "_BLOCK_ROWS", 100)
    index = IdIndex()
    for f in range(10):
        index.add(1, ids(f"f{f}", *[(f"img-{f * 1000 + r:09d}", r) for r in range(95)]))
    assert index.rows == 950 and index.nbytes == 16 * 950 and len(index._blocks) == 5  # 2 tables a block
    held = [(h, p) for h, p, _ in index._blocks] + index._pending
    assert {h.dtype for h, _ in held} == {p.dtype for _, p in held} == {np.dtype(np.uint64)}
    hashes, positions = index.candidates()
    assert len(hashes) == len(positions) == 0 and index.nbytes == 0  # the rows are let go


def test_packing_limits_and_their_errors(monkeypatch):
    top = id_index.max_rows() - 1
    assert id_index.max_rows() == 2**36 and id_index.max_files() == 2**28
    files, rows = unpack(pack(np.array([0, 2**28 - 1]), np.array([top, 0])))
    assert files.tolist() == [0, 2**28 - 1] and rows.tolist() == [top, 0]
    found = find_duplicates([(1, ids("big", ("x", top), ("x", top - 1)))])
    assert list(found) == [("big", top)] and f"big row {top - 1}," in found[("big", top)]
    with pytest.raises(IdPassLimitError, match=f"at most {2**36} rows a file.*big has row {2**36}"):
        find_duplicates([(1, ids("small", ("y", 0))), (1, ids("big", ("x", 2**36), ("x", 0)))])
    # 2 bits of file: 4 files hold, a fifth is refused by name
    monkeypatch.setattr(id_index, "_ROW_BITS", 62)
    four = [(1, ids(f"f{i}", ("x", i))) for i in range(4)]
    assert len(find_duplicates(four)) == 3
    with pytest.raises(IdPassLimitError, match="at most 4 input files.*f4 is one more"):
        find_duplicates(four + [(1, ids("f4", ("x", 0)))])


def test_the_hash_is_the_same_in_every_process_and_every_layout():
    names = ["", "a", "abcdefg", "abcdefgh", "abcdefghi", "img-000000042", "é" * 9, "x" * 100]
    here = hash_ids(pa.array(names)).tolist()
    code = ("import pyarrow as pa; from pipelines.reading.id_index import hash_ids; "
            f"print(hash_ids(pa.array({names!r})).tolist())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(there) == here and len(set(here)) == len(names)
    # pinned: a Ray task and the driver of another version must agree
    assert here[:2] == [1149234389432173950, 13354106589062217385]
    for layout in (pa.array(names, pa.large_string()), pa.array([n.encode() for n in names], pa.binary()),
                   pa.array(["pad"] + names).slice(1), pa.chunked_array([names[:3], names[3:]])):
        assert hash_ids(layout).tolist() == here
    assert hash_ids(pa.array([None, "a"])).tolist() == here[:2]  # null hashes as ""; confirmation tells them apart


def test_an_input_that_changes_between_the_two_reads_is_an_error():
    reads = iter([[(1, ids("a", ("x", 0), ("x", 1)))], [(1, ids("a", ("x", 0), ("w", 1)))],
                  [(1, ids("a", ("x", 0), ("x", 1)))], [(1, ids("a", ("x", 0)))],
                  [(1, ids("a", ("x", 0), ("x", 1)))], [(1, ids("a", ("x", 0), ("x", 1), ("x", 1)))]])
    with pytest.raises(InputChangedError, match="a changed .* row 1, .* holds another id now"):
        find_duplicates(lambda files: next(reads))
    with pytest.raises(InputChangedError, match="a changed .* row 1, .* is not there any more"):
        find_duplicates(lambda files: next(reads))
    with pytest.raises(InputChangedError, match="a changed .* row 1, .* is there more times than before"):
        find_duplicates(lambda files: next(reads))


def test_ids_are_read_again_only_from_files_with_candidates():
    tables = {"a": ids("a", ("x", 0), ("y", 1)), "b": ids("b", ("x", 0)), "c": ids("c", ("z", 0))}
    asked = []

    def read(files):
        asked.append(files)
        return [(1, t) for uri, t in tables.items() if files is None or (1, uri) in files]

    assert list(find_duplicates(read)) == [("b", 0)]
    assert asked == [None, {(1, "a"), (1, "b")}]
    with pytest.raises(TypeError, match="reads ids twice"):
        find_duplicates(pair for pair in [(1, tables["a"])])


def test_hashes_from_ray_tasks_give_the_same_result(tmp_path):
    """_read_ids (the Ray stage) sends id_hash instead of id; the driver's pass is the same."""
    import json

    from pipelines.reading import ReaderOptions

    rows = {"a.jsonl": ["d1", "d2", "d1"], "b.jsonl": ["d2", "d3"]}
    for name, keys in rows.items():
        (tmp_path / name).write_text("".join(json.dumps({"id": k, "text": "t"}) + "\n" for k in keys))
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text", id_column="id")
    from pipelines.reading import Shard

    shards = [Shard(files=(str(tmp_path / "b.jsonl"),)), Shard(files=(str(tmp_path / "a.jsonl"),))]
    batch = {"rank": np.array([0, 1]), "shard": np.array([json.dumps(s.describe()) for s in shards], dtype=object)}
    plain = duplicates._read_ids(batch, opts=opts)
    hashed = duplicates._read_ids(batch, opts=opts, hashed=True)
    assert "id" not in hashed.column_names and hashed.column("id_hash").type == pa.uint64()

    def tables(t):
        return [(r, t.filter(pa.compute.equal(t.column("rank"), r))) for r in (0, 1)]

    found = find_duplicates(lambda files: tables(hashed if files is None else plain))
    assert found == find_duplicates(tables(plain)) == reference(tables(plain))
    assert sorted(found) == [(str(tmp_path / "a.jsonl"), 1), (str(tmp_path / "a.jsonl"), 2)]


def test_without_drops_committed_duplicates_by_file_and_row():
    table = ids(["a", "b", "a", "b"], ("x", 0), ("x", 0), ("y", 1), ("z", 2))
    kept = duplicates._without(table, duplicates._rows_by_uri({("a", 0), ("b", 2), ("c", 0)}))
    assert list(zip(kept.column("source_uri").to_pylist(), kept.column("source_row").to_pylist(), strict=True)) \
        == [("b", 0), ("a", 1)]


@pytest.mark.integration
def test_on_ray_the_pass_gives_what_it_gives_on_the_driver(ray_cluster, tmp_path, monkeypatch):
    """Past _DRIVER_ID_PASS_FILES files, Ray tasks read the ids and send their hashes; the
    files with candidates are read again on Ray for their ids. Same rows, same messages."""
    import json

    from pipelines.reading import ReaderOptions, duplicate_rows, plan_shards

    keys = {"a.jsonl": ["d1", "d2", "d1", "d5"], "b.jsonl": ["d2", "d3"], "c.jsonl": ["d3", "d4"],
            "d.jsonl": ["d6"], "e.jsonl": ["d5", "d1"]}
    for name, ks in keys.items():
        (tmp_path / name).write_text("".join(json.dumps({"id": k, "text": "t"}) + "\n" for k in ks))
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text", id_column="id")
    shards = plan_shards([str(tmp_path / n) for n in sorted(keys)], format="jsonl")
    done, todo = [shards[2], shards[4]], [shards[0], shards[1], shards[3]]  # c and e committed
    committed = {(str(tmp_path / "e.jsonl"), 1)}  # e's d1 went to _errors (a.jsonl's row 0 first)

    def run() -> dict:
        return duplicate_rows(opts, done=done, todo=todo, committed_duplicates=lambda: committed)

    on_driver = run()
    asked = []
    on_ray_reads = duplicates._ids_on_ray

    def ids_on_ray(opts, ranked, *, hashed):
        asked.append((hashed, sorted(f.rsplit("/", 1)[1] for _, s in ranked for f in s.files)))
        return on_ray_reads(opts, ranked, hashed=hashed)

    monkeypatch.setattr(duplicates, "_DRIVER_ID_PASS_FILES", 1)
    monkeypatch.setattr(duplicates, "_ids_on_ray", ids_on_ray)
    on_ray = run()
    assert on_ray == on_driver
    a, b = shards[0].key, shards[1].key
    assert {k: sorted((r, w.split(", which")[0]) for _, r, w in v) for k, v in on_ray.items()} == {
        a: [(2, "id 'd1' first appears in " + str(tmp_path / "a.jsonl") + " row 0"),
            (3, "id 'd5' first appears in " + str(tmp_path / "e.jsonl") + " row 0")],  # committed first
        b: [(0, "id 'd2' first appears in " + str(tmp_path / "a.jsonl") + " row 1"),  # a before b
            (1, "id 'd3' first appears in " + str(tmp_path / "c.jsonl") + " row 0")],
    }
    # hashes of all five files, then the ids of the four with candidates (not d.jsonl)
    assert asked == [(True, sorted(keys)), (False, ["a.jsonl", "b.jsonl", "c.jsonl", "e.jsonl"])]
