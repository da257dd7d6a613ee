"""input.uri as WebDataset users write it: brace patterns (shards-{00000..00099}.tar,
{train,val}/*.tar), listed from one listing of the folder before the braces; every
named path must exist; ids stay relative to that folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.support.generation as gs
from pipelines import SpecError, validate_spec
from pipelines.generation import CaptionJobSpec, PreflightError, preflight
from pipelines.reading import (
    InputListingError,
    ReaderOptions,
    Shard,
    has_pattern,
    list_inputs,
    read_shard,
)
from pipelines.reading.listing import brace_paths, glob_base

REPO = Path(__file__).resolve().parents[2]
DEMO_CAPTIONER = REPO / "models" / "demo-captioner"


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_brace_patterns_expand_as_webdataset_expands_them() -> None:
    assert brace_paths("s3://b/shards-{00008..00011}.tar") == [
        "s3://b/shards-00008.tar", "s3://b/shards-00009.tar", "s3://b/shards-00010.tar", "s3://b/shards-00011.tar"]
    assert brace_paths("d/{train,val}/{0..1}.tar") == ["d/train/0.tar", "d/train/1.tar", "d/val/0.tar", "d/val/1.tar"]
    assert brace_paths("d/{a,a,b}.tar") == ["d/a.tar", "d/b.tar"]  # named twice: read once
    # no brace expression: a lone {2024} is part of a name, a glob is a glob
    assert brace_paths("photos {2024}/x.jpg") is None and brace_paths("d/*.tar") is None
    assert has_pattern("d/{0..3}.tar") and has_pattern("d/*.tar") and not has_pattern("photos {2024}/x.jpg")
    assert glob_base("/data/run {1}/shards/{000..009}.tar") == "/data/run {1}/shards"
    assert glob_base("/data/{train,val}/*.tar") == "/data"


@pytest.mark.parametrize("group", ["{a,b}", "{0..9}", "{00000..00099}", "{a..e}", "{1..10..2}", "{-3..3}", "{,}",
                                   "{2024}", "{a}", "{}", "{1..a}", "{{a,b}}", "{x{a,b}}"])
def test_a_pattern_is_told_from_its_text_as_braceexpand_expands_it(group) -> None:
    """has_pattern reads the braces' syntax instead of expanding them (a root naming a
    million shards is checked for every row's id): it agrees with braceexpand."""
    from braceexpand import braceexpand

    path = f"s3://b/run {{7}}/{group}.tar"
    assert has_pattern(path) == (list(braceexpand(path)) != [path])


def test_a_brace_range_lists_exactly_the_shards_it_names(tmp_path) -> None:
    for i in range(12):
        _touch(tmp_path / "shards" / f"{i:05d}.tar")
    _touch(tmp_path / "shards" / "notes.txt")
    listing = list_inputs(str(tmp_path / "shards" / "{00002..00010}.tar"), format="webdataset")
    assert [Path(f).name for f in listing.files] == [f"{i:05d}.tar" for i in range(2, 11)]
    assert listing.ignored == [] and all(listing.sizes[f] == 1 for f in listing.files)
    # a file:// URI keeps its form; a list of folders and globs mixes with ranges
    _touch(tmp_path / "train" / "a" / "0.tar")
    _touch(tmp_path / "train" / "a" / "1.tar")
    _touch(tmp_path / "val" / "0.tar")
    _touch(tmp_path / "val" / "skip.md")
    both = list_inputs(f"file://{tmp_path}/{{train,val/*.tar}}", format="webdataset")
    assert [f.removeprefix(f"{tmp_path}/") for f in both.files] == ["train/a/0.tar", "train/a/1.tar", "val/0.tar"]


def test_names_the_braces_give_that_do_not_exist_stop_the_listing_naming_them(tmp_path) -> None:
    for i in range(3):
        _touch(tmp_path / f"{i:05d}.tar")
    with pytest.raises(InputListingError) as excinfo:
        list_inputs(str(tmp_path / "{00000..00007}.tar"), format="webdataset")
    message = str(excinfo.value)
    assert "its braces name 8 path(s), and 5 of them do not exist" in message
    assert f"{tmp_path}/00003.tar, {tmp_path}/00004.tar, {tmp_path}/00005.tar and 2 more" in message
    assert "fix the range in input.uri" in message
    # a folder holding braces in its name, as written, is a folder
    _touch(tmp_path / "run {a,b}" / "0.tar")
    listing = list_inputs(str(tmp_path / "run {a,b}"), format="webdataset")
    assert [Path(f).name for f in listing.files] == ["0.tar"]


def test_image_ids_are_relative_to_the_folder_before_the_braces(tmp_path) -> None:
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        gs.write_bytes(str(tmp_path / "photos" / day / "a.png"), gs.image_bytes(0))
    uri = str(tmp_path / "photos" / "2024-01-{01,03}")
    listing = list_inputs(uri, format="images")
    opts = ReaderOptions(format="images", root=uri)
    ids = [r["id"] for f in listing.files for r in read_shard(Shard(files=(f,)), opts).to_pylist()]
    assert ids == ["2024-01-01/a.png", "2024-01-03/a.png"]


def test_a_caption_spec_with_braces_is_checked_on_the_driver(tmp_path) -> None:
    """A missing shard is a preflight problem under input.uri; braces in output.uri are a spec problem."""
    for i in range(2):
        gs.write_bytes(str(tmp_path / "in" / f"{i}.png"), gs.image_bytes(i))
    spec = gs.caption_spec(str(tmp_path / "in" / "{0..2}.png"), str(tmp_path / "out"), str(DEMO_CAPTIONER))
    with pytest.raises(PreflightError) as excinfo:
        preflight(validate_spec(CaptionJobSpec, spec, source="test"))
    (problem,) = excinfo.value.problems
    assert problem.startswith("input.uri:") and "1 of them do not exist" in problem and "/in/2.png" in problem
    spec = gs.caption_spec(str(tmp_path / "in" / "{0..1}.png"), str(tmp_path / "out-{a,b}"), str(DEMO_CAPTIONER))
    with pytest.raises(SpecError, match=r"output.uri: .*out-\{a,b\}' holds \{ \}.* or braces"):
        validate_spec(CaptionJobSpec, spec, source="test")
    spec["output"]["uri"] = str(tmp_path / "out")
    plan = preflight(validate_spec(CaptionJobSpec, spec, source="test")).plan
    assert plan.output_uri == str(tmp_path / "out")
