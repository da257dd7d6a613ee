"""WebDataset tar shards through the reading layer, without Ray: samples grouped by key,
image by extension, references from txt or a json field, ids from keys or a json field,
samples without an image and tars cut short as error rows, the samples before a cut kept."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

import tests.support.generation as gs
from pipelines import validate_spec
from pipelines.generation import CaptionJobSpec, SummarizeJobSpec
from pipelines.reading import (
    ReaderOptions,
    Shard,
    check_input_files,
    list_inputs,
    read_shard,
    read_shard_ids,
)
from pipelines.reading.webdataset import split_name
from tests.support.webdataset import tar_bytes, write_tar


def _samples(n: int, start: int = 0) -> list[dict]:
    return [{"__key__": f"{i:09d}", "jpg": gs.image_bytes(i, "JPEG"), "txt": f"caption {i}",
             "json": {"caption": f"json caption {i}", "uid": f"u{i}", "width": 32}} for i in range(start, start + n)]


def _read(uri: str, **opts) -> list[dict]:
    return read_shard(Shard(files=(uri,)), ReaderOptions(format="webdataset", root=uri.rsplit("/", 1)[0], **opts)).to_pylist()


def test_member_names_split_into_key_and_extension() -> None:
    assert split_name("00000/000000012.jpg") == ("00000/000000012", "jpg")
    assert split_name("a/b.seg.PNG") == ("a/b", "seg.png")
    assert split_name("noext") == ("noext", "")


def test_samples_are_rows_with_image_reference_and_key(tmp_path) -> None:
    samples = _samples(3)
    samples[1] = {"__key__": samples[1]["__key__"], "png": gs.image_bytes(1), "txt": "caption 1"}  # another image type
    uri = str(tmp_path / "00000.tar")
    write_tar(uri, samples)
    rows = _read(uri, reference_column="txt")
    assert [r["id"] for r in rows] == ["000000000", "000000001", "000000002"]
    assert [r["source_row"] for r in rows] == [0, 1, 2]
    assert [r["reference"] for r in rows] == ["caption 0", "caption 1", "caption 2"]
    assert rows[0]["payload"] == samples[0]["jpg"] and rows[1]["payload"] == samples[1]["png"]
    assert all(r["error_cause"] == "" for r in rows)
    by_json = _read(uri, reference_column="json.caption", id_column="json.uid")
    assert [(r["id"], r["reference"]) for r in by_json] == [("u0", "json caption 0"), ("000000001", None),
                                                            ("u2", "json caption 2")]
    assert by_json[1]["error_cause"] == "missing_id"  # sample 1 has no json member


def test_a_sample_without_an_image_is_an_error_row_naming_tar_and_key(tmp_path) -> None:
    samples = _samples(3)
    del samples[1]["jpg"]
    uri = str(tmp_path / "s.tar")
    write_tar(uri, samples)
    rows = _read(uri)
    assert [(r["id"], r["error_cause"]) for r in rows] == [("000000000", ""), ("000000001", "missing_image"),
                                                           ("000000002", "")]
    assert "'000000001'" in rows[1]["error_message"] and uri in rows[1]["error_message"]
    assert "json, txt" in rows[1]["error_message"]
    # webp only when asked for
    assert _read(uri, image_extensions=("webp",))[0]["error_cause"] == "missing_image"


def test_a_tar_cut_short_keeps_the_samples_before_the_break(tmp_path) -> None:
    data = tar_bytes(_samples(6))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        inside = tar.getmember("000000003.txt").offset_data + 2  # the cut falls in sample 3's text
    uri = str(tmp_path / "cut.tar")
    with open(uri, "wb") as f:
        f.write(data[:inside])
    rows = _read(uri)
    whole = [r for r in rows if r["error_cause"] == ""]
    assert [r["id"] for r in whole] == ["000000000", "000000001", "000000002"]
    cut = [r for r in rows if r["error_cause"] == "truncated_file"]
    # the sample the cut fell in, and the file's own row
    assert [r["id"] for r in cut] == ["000000003", "cut.tar#file"]
    assert "the tar breaks after" in cut[1]["error_message"]


def test_gzip_tars_and_folders_in_keys_read_the_same(tmp_path) -> None:
    uri = str(tmp_path / "00001.tar.gz")
    with open(uri, "wb") as f:
        f.write(gzip.compress(tar_bytes(_samples(2), folder="00001/")))
    rows = _read(uri, reference_column="txt")
    assert [(r["id"], r["reference"]) for r in rows] == [("00001/000000000", "caption 0"),
                                                         ("00001/000000001", "caption 1")]
    listing = list_inputs(str(tmp_path), format="webdataset")
    assert listing.files == [uri]


def test_the_id_pass_reads_no_images_and_preflight_accepts_tars(tmp_path) -> None:
    uri = str(tmp_path / "a.tar")
    write_tar(uri, _samples(2))
    ids = read_shard_ids(Shard(files=(uri,)), ReaderOptions(format="webdataset", root=str(tmp_path)))
    assert ids.column("id").to_pylist() == ["000000000", "000000001"]
    opts = ReaderOptions(format="webdataset", root=str(tmp_path))
    assert check_input_files([uri], opts) == []
    images = check_input_files([uri], ReaderOptions(format="images", root=str(tmp_path)))
    assert len(images) == 1 and "input.format=webdataset" in images[0]


def test_webdataset_keys_are_checked_in_specs(tmp_path) -> None:
    base = gs.caption_spec(str(tmp_path), str(tmp_path / "out"), str(tmp_path / "m"))
    ok = {**base, "input": {"uri": str(tmp_path), "format": "webdataset", "reference_column": "json.caption",
                            "id_column": "json.uid", "image_extensions": [".JPG", "png"]}}
    spec = validate_spec(CaptionJobSpec, ok, source="t")
    assert spec.input.reader_options(reference_column="json.caption").image_extensions == ("jpg", "png")
    bad = {**base, "input": {"uri": str(tmp_path), "format": "webdataset", "id_column": "uid"}}
    with pytest.raises(Exception, match="input.id_column: 'uid'; with format webdataset .*json.<field>"):
        validate_spec(CaptionJobSpec, bad, source="t")
    wrong = {**base, "input": {"uri": str(tmp_path), "format": "images", "image_extensions": ["jpg"]}}
    with pytest.raises(Exception, match="input.image_extensions: only used with format webdataset"):
        validate_spec(CaptionJobSpec, wrong, source="t")
    text = gs.summarize_spec(str(tmp_path), str(tmp_path / "o"), str(tmp_path / "m"),
                             input={"uri": str(tmp_path), "format": "webdataset"})
    with pytest.raises(Exception, match=r"input.format: webdataset \(tar shards of images\), but this job reads texts"):
        validate_spec(SummarizeJobSpec, text, source="t")


def test_a_tar_cut_at_a_member_boundary_is_cut_and_whole_tars_of_any_size_are_whole(tmp_path) -> None:
    """tarfile ends a stream quietly at a missing header; the end-of-archive blocks tell a
    whole tar from one cut between members, wherever its members end (on a 10 KiB record
    boundary too: 512 header + 9728 data bytes)."""
    samples = [{"__key__": f"{i:03d}", "png": gs.image_bytes(i), "txt": "x" * (9728 if i == 0 else 5)} for i in range(4)]
    data = tar_bytes(samples)
    whole = str(tmp_path / "whole.tar")
    with open(whole, "wb") as f:
        f.write(data)
    assert [r["error_cause"] for r in _read(whole)] == ["", "", "", ""]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        boundary = tar.getmember("002.png").offset  # where sample 2's first header starts
    cut = str(tmp_path / "cut.tar")
    with open(cut, "wb") as f:
        f.write(data[:boundary])
    rows = _read(cut)
    # sample 1 may have had more members: it is reported, not guessed whole
    assert [(r["id"], r["error_cause"]) for r in rows] == [("000", ""), ("001", "truncated_file"),
                                                           ("cut.tar#file", "truncated_file")]


def test_fine_tuning_reads_webdataset_pairs(tmp_path) -> None:
    """A fine-tuning split of tar shards: the image is the input, txt (by default) the target."""
    from pipelines.finetune import DataSource
    from pipelines.finetune.data import plan_pairs

    write_tar(str(tmp_path / "00000.tar"), _samples(3))
    pairs = plan_pairs(DataSource(uri=str(tmp_path), format="webdataset"), key="data.train")
    assert pairs.rows is None and len(pairs.shards) == 1  # counted when read
    rows = read_shard(pairs.shards[0], pairs.reader).to_pylist()
    assert [(r["id"], r["reference"]) for r in rows] == [(f"{i:09d}", f"caption {i}") for i in range(3)]
    by_json = plan_pairs(DataSource(uri=str(tmp_path), format="webdataset", target_column="json.caption"), key="d")
    assert read_shard(by_json.shards[0], by_json.reader).to_pylist()[2]["reference"] == "json caption 2"


def test_preflight_checks_the_members_and_fields_a_spec_names(tmp_path) -> None:
    """A wrong member or json field is found on the driver from the first samples, not as
    a job whose references are all null."""
    uri = str(tmp_path / "a.tar")
    write_tar(uri, _samples(2))
    ok = ReaderOptions(format="webdataset", root=str(tmp_path), reference_column="json.caption", id_column="json.uid")
    assert check_input_files([uri], ok) == []
    wrong = ReaderOptions(format="webdataset", root=str(tmp_path), reference_column="caption",
                          id_column="json.key", image_extensions=("webp",))
    problems = check_input_files([uri], wrong)
    assert [p.split(":")[0] for p in problems] == ["input.image_extensions", "input.reference_column", "input.id_column"]
    assert "(their members: jpg, json, txt)" in problems[0]
    assert "(their fields: caption, uid, width)" in problems[2]


def test_a_tar_is_handed_on_in_tables_as_its_samples_come(tmp_path, monkeypatch) -> None:
    """A tar is never whole in memory: rows leave in tables of TABLE_ROWS samples, the
    count on the last table only, and a cut tar keeps the tables before the break."""
    from pipelines.reading import iter_shard

    monkeypatch.setattr("pipelines.reading.rows.TABLE_ROWS", 3)
    uri = str(tmp_path / "00000.tar")
    data = write_tar(uri, _samples(10))
    opts = ReaderOptions(format="webdataset", root=str(tmp_path))
    tables = list(iter_shard(Shard(files=(uri,)), opts))
    assert [t.num_rows for t in tables] == [3, 3, 3, 1]
    assert [set(t.column("shard_rows").to_pylist()) for t in tables] == [{-1}, {-1}, {-1}, {10}]
    assert [r for t in tables for r in t.column("source_row").to_pylist()] == list(range(10))
    (tmp_path / "cut.tar").write_bytes(data[: len(data) * 2 // 3])
    rows = [r for t in iter_shard(Shard(files=(str(tmp_path / "cut.tar"),)), opts) for r in t.to_pylist()]
    assert rows[-1]["id"] == "cut.tar#file" and rows[-1]["error_cause"] == "truncated_file"
    assert [r["row_index"] for r in rows] == list(range(len(rows))) and len(rows) >= 6


def test_an_empty_or_broken_first_tar_does_not_block_the_job(tmp_path) -> None:
    """img2dataset writes an empty tar when every download of a shard failed: it is input
    with no rows. A first tar that is not a tar is that file's error row when a later
    file fits; only when none of the files looked at fits is the spec wrong."""
    empty, bad, good = (str(tmp_path / f"0000{i}.tar") for i in range(3))
    with tarfile.open(empty, "w"):
        pass
    (tmp_path / "00001.tar").write_text("this is not a tar archive\n" * 20)
    write_tar(good, _samples(2))
    opts = ReaderOptions(format="webdataset", root=str(tmp_path))
    assert check_input_files([empty, bad, good], opts) == []
    assert read_shard(Shard(files=(empty,)), opts).num_rows == 0
    assert [r["error_cause"] for r in read_shard(Shard(files=(bad,)), opts).to_pylist()] == ["unreadable_file"]
    problems = check_input_files([empty, bad], opts)
    assert len(problems) == 1 and problems[0].startswith("input.format: webdataset") and bad in problems[0]


def test_a_json_member_that_does_not_parse_is_bad_json(tmp_path) -> None:
    samples = _samples(2)
    samples[1]["json"] = b"{not json"
    uri = str(tmp_path / "a.tar")
    write_tar(uri, samples)
    rows = _read(uri, id_column="json.uid", reference_column="json.caption")
    assert [(r["id"], r["error_cause"]) for r in rows] == [("u0", ""), ("000000001", "bad_json")]
    assert "not valid JSON" in rows[1]["error_message"] and "'000000001'" in rows[1]["error_message"]


def test_members_of_a_sample_apart_in_the_tar_are_named_as_split(tmp_path) -> None:
    # tar cf of a folder may write a.jpg, b.jpg, a.txt, b.txt: the webdataset library
    # reads four samples too; the later two must not look like samples without images.
    a, b = _samples(2)
    uri = str(tmp_path / "mixed.tar")
    write_tar(uri, [{"__key__": a["__key__"], "jpg": a["jpg"]}, {"__key__": b["__key__"], "jpg": b["jpg"]},
                    {"__key__": a["__key__"], "txt": a["txt"]}, {"__key__": b["__key__"], "txt": b["txt"]}])
    rows = _read(uri, reference_column="txt")
    assert [(r["id"], r["error_cause"]) for r in rows] == [
        ("000000000", ""), ("000000001", ""), ("000000000", "split_sample"), ("000000001", "split_sample")]
    assert "not next to each other" in rows[2]["error_message"] and "(txt)" in rows[2]["error_message"]


def test_a_sample_without_its_image_does_not_claim_its_key(tmp_path) -> None:
    """q1 without an image in the first tar, q1 with one in the second: the second is
    processed (the first goes to _errors as missing_image), not rejected as a duplicate."""
    from pipelines.reading import duplicate_rows

    first, second = str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")
    write_tar(first, [{"__key__": "q1", "txt": "no image"}, {"__key__": "q2", "jpg": gs.image_bytes(2, "JPEG")}])
    write_tar(second, [{"__key__": "q1", "jpg": gs.image_bytes(1, "JPEG")}, {"__key__": "q2", "jpg": b"x"}])
    opts = ReaderOptions(format="webdataset", root=str(tmp_path))
    shards = [Shard(files=(first,)), Shard(files=(second,))]
    found = duplicate_rows(opts, done=[], todo=shards, committed_duplicates=set)
    assert {k: [(uri, row) for uri, row, _ in v] for k, v in found.items()} == {shards[1].key: [(second, 1)]}
