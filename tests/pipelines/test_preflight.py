"""What a generation job checks before it writes anything (no Ray: preflight runs on the
driver before Ray starts), and the output layout that decides what a job may delete.

Inputs here are other people's: a folder with a user's notes, a Spark output, tar
shards, Parquet without the named column, compressed corpora, a typo in model.uri.
"""

from __future__ import annotations

import gzip
import json
import lzma
import re
import tarfile
from pathlib import Path

import pytest
import zstandard

import tests.support.generation as gs
from pipelines import SpecError, load_spec, validate_spec
from pipelines.generation import CaptionJobSpec, PreflightError, SummarizeJobSpec, preflight
from pipelines.generation.output import OutputStore, is_own_path
from pipelines.reading import ReaderOptions, Shard, list_inputs, read_shard, sniff

REPO = Path(__file__).resolve().parents[2]
DEMO_CAPTIONER = REPO / "models" / "demo-captioner"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> str:
    return gs.save(gs.captioner(), str(tmp_path_factory.mktemp("m") / "captioner"))


@pytest.fixture(scope="module")
def summarizer(tmp_path_factory) -> str:
    return gs.save(gs.summarizer(), str(tmp_path_factory.mktemp("m") / "summarizer"))


def _caption(spec: dict):
    return preflight(validate_spec(CaptionJobSpec, spec, source="test"))


def _images(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        gs.write_bytes(str(folder / f"{i}.png"), gs.image_bytes(i))
    return folder


def _problems(excinfo: pytest.ExceptionInfo) -> list[str]:
    return excinfo.value.problems


# --- the output: never delete what is not ours ---------------------------------------


def test_own_layout_is_recognized_by_exact_names() -> None:
    key = "0123456789abcdef0123"
    run = "20261206T061500-0123abcd"
    for rel in (f"part-{key}.parquet", "part-empty.parquet", f"_errors/part-{key}.parquet",
                f"_commits/{key}.json", f"_staging/{run}/{key}/{'f' * 32}-ok.parquet",
                f"_staging/{run}/commit/_errors-part-{key}.parquet", f"_staging/{run}/commit/{key}.json",
                "_job.json", "_summary.json", "_gallery.html", "_SUCCESS", "_lease.json"):
        assert is_own_path(rel), rel
    for rel in ("notes.txt", "part-00000-5b1f-c000.snappy.parquet", f"sub/part-{key}.parquet",
                "_errors/notes.txt", f"_commits/{key}.json.bak", "_staging", ".DS_Store", "_SUCCESS.crc",
                "_staging/mywork/draft.csv", "_staging/readme.md", f"_staging/{run}/{key}/notes.txt"):
        assert not is_own_path(rel), rel


@pytest.mark.parametrize("mode", ["error_if_exists", "resume", "overwrite"])
def test_a_folder_with_the_users_files_is_refused_in_every_mode_and_kept(captioner, tmp_path, mode) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "sub" / "a.csv").write_text("a,b")
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(out), captioner)
    spec["output"]["mode"] = mode
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    (problem,) = _problems(excinfo)
    assert problem.startswith(f"output.uri: {out} holds 2 file(s) this job did not write (notes.txt, sub/a.csv)")
    assert "never deletes what it did not write" in problem
    # Under the lease too (two drivers that passed preflight together): refused, nothing deleted.
    with pytest.raises(Exception, match="this job did not write"):
        OutputStore(str(out)).prepare(mode=mode, fingerprint="f")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["notes.txt", "sub/a.csv"]


def test_a_spark_output_is_not_ours_whatever_its_names(captioner, tmp_path) -> None:
    """part-*.parquet and _SUCCESS without our _job.json are somebody else's."""
    out = tmp_path / "spark"
    out.mkdir()
    (out / "_SUCCESS").write_bytes(b"")
    (out / f"part-{'a' * 20}.parquet").write_bytes(b"PAR1")
    survey = OutputStore(str(out)).survey()
    assert survey.own == [] and sorted(survey.foreign) == ["_SUCCESS", f"part-{'a' * 20}.parquet"]
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(out), captioner)
    spec["output"]["mode"] = "overwrite"
    with pytest.raises(PreflightError, match="holds 2 file"):
        _caption(spec)


def test_overwrite_deletes_only_files_of_our_layout(tmp_path) -> None:
    out = tmp_path / "out"
    store = OutputStore(str(out))
    store.prepare(mode="overwrite", fingerprint="f")  # writes _job.json: the folder is ours
    key = "0" * 20
    for rel in (f"part-{key}.parquet", f"_errors/part-{key}.parquet", f"_commits/{key}.json", "_SUCCESS",
                "_summary.json", "_gallery.html", f"_staging/20261206T061500-0123abcd/{key}/{'e' * 32}-err.parquet"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("{}")
    assert OutputStore(str(out)).survey().foreign == []
    assert OutputStore(str(out)).prepare(mode="overwrite", fingerprint="g") == {}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["_job.json"]
    assert json.loads((out / "_job.json").read_text()) == {"fingerprint": "g", "model_weights": ""}


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_an_output_overlapping_the_input_is_refused(captioner, tmp_path, where) -> None:
    src = _images(tmp_path / "data" / "images")
    out = {"equal": src, "inside": src / "captions", "containing": tmp_path / "data"}[where]
    spec = gs.caption_spec(str(src / "*.png") if where == "inside" else str(src), str(out), captioner)
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    assert any(p.startswith(f"output.uri: {out} overlaps input.uri") for p in _problems(excinfo))
    assert sorted(p.name for p in src.iterdir() if p.is_file()) == ["0.png", "1.png"]


def test_a_mode_set_for_one_output_is_not_carried_to_another(tmp_path) -> None:
    """The bundled sample overwrites its own output; --set output.uri elsewhere starts in
    error_if_exists unless output.mode is set too. The same for a spec file."""
    bound = {"output.uri": ["output.mode"]}
    default = {"input": {"uri": "x", "format": "images"}, "model": {"uri": "m"},
               "output": {"uri": "outputs/caption_sample", "mode": "overwrite", "gallery_rows": 48}}

    def load(path, sets):
        return load_spec(CaptionJobSpec, path, sets, default=default, unset_with=bound).output

    assert load(None, []).mode == "overwrite"
    moved = load(None, [f"output.uri={tmp_path}"])
    assert (moved.mode, moved.gallery_rows) == ("error_if_exists", 48)
    assert load(None, [f"output.uri={tmp_path}", "output.mode=resume"]).mode == "resume"
    assert default["output"]["mode"] == "overwrite"  # the default itself is not changed
    (tmp_path / "job.yaml").write_text("input: {uri: x, format: images}\nmodel: {uri: m}\n"
                                       "output: {uri: out, mode: overwrite}\n")
    assert load(tmp_path / "job.yaml", []).mode == "overwrite"
    assert load(tmp_path / "job.yaml", ["output.uri=elsewhere"]).mode == "error_if_exists"


def test_a_format_given_with_set_drops_the_defaults_columns_but_keeps_those_given() -> None:
    """The sample's columns belong to its Parquet files: --set input.format drops those not
    given with it; one given with it (input.reference_column=txt) is the user's."""
    bound = {"input.format": ["input.input_column", "input.id_column", "input.reference_column"]}
    default = {"input": {"uri": "x", "format": "parquet", "input_column": "image", "id_column": "id",
                         "reference_column": "caption"}, "model": {"uri": "m"}, "output": {"uri": "o"}}
    spec = load_spec(CaptionJobSpec, None, ["input.format=webdataset", "input.reference_column=txt"],
                     default=default, unset_with=bound).input
    assert (spec.format, spec.id_column, spec.reference_column) == ("webdataset", None, "txt")


# --- the input: format and columns, from the first file ------------------------------


def test_every_problem_is_said_at_once_before_anything_is_written(tmp_path) -> None:
    gs.write_parquet(str(tmp_path / "in" / "a.parquet"), [{"img": gs.image_bytes(0), "key": "a", "cap": "x"}])
    out = tmp_path / "out"
    spec = gs.caption_spec(str(tmp_path / "in"), str(out), str(REPO / "models" / "demo-captionr"),
                           input={"uri": str(tmp_path / "in"), "format": "parquet", "input_column": "image",
                                  "id_column": "id", "reference_column": "caption"})
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    problems = _problems(excinfo)
    assert [p.split(":")[0].split(" ")[0] for p in problems] == [
        "model.uri", "input.input_column", "input.id_column", "input.reference_column"]
    assert f"did you mean {DEMO_CAPTIONER}?" in problems[0]
    assert "(its columns: img, key, cap); set input.input_column to one of them" in problems[1]
    assert problems[3].endswith("or to null")
    assert str(excinfo.value).startswith("cannot run job; nothing was written (4 problem(s))")
    assert not out.exists()


def test_tar_shards_passed_as_images_say_what_they_are(captioner, tmp_path) -> None:
    src = tmp_path / "shards"
    src.mkdir()
    with tarfile.open(src / "00000.tar", "w") as tar:
        image = tmp_path / "000000000.jpg"
        image.write_bytes(gs.image_bytes(0, "JPEG"))
        tar.add(image, arcname="000000000.jpg")
    spec = gs.caption_spec(str(src), str(tmp_path / "out"), captioner)
    with pytest.raises(PreflightError, match=r"1 other file\(s\) were skipped, e.g. .*00000.tar \(a tar archive; "
                       r"tar shards \(WebDataset\) are read with input.format=webdataset\)"):
        _caption(spec)
    spec["input"]["extensions"] = [".tar"]
    with pytest.raises(PreflightError, match="looks like a tar archive, not images input; tar shards .* are read "
                       "with input.format=webdataset"):
        _caption(spec)


@pytest.mark.parametrize(
    ("fmt", "content", "said"),
    [
        ("jsonl", b"PAR1\x00\x00garbage", "looks like a Parquet file, not jsonl input; use input.format=parquet"),
        ("text_lines", bytes(range(256)) * 4, "looks like binary data, not text_lines input"),
        ("jsonl", b"just a line of prose\n", "looks like text, not jsonl input; use input.format=text_lines"),
    ],
)
def test_a_wrong_format_says_what_the_files_look_like(summarizer, tmp_path, fmt, content, said) -> None:
    name = {"jsonl": "a.jsonl", "text_lines": "a.txt"}[fmt]
    gs.write_bytes(str(tmp_path / "in" / name), content)
    spec = gs.summarize_spec(str(tmp_path / "in"), str(tmp_path / "out"), summarizer,
                             input={"uri": str(tmp_path / "in"), "format": fmt})
    with pytest.raises(PreflightError, match=said):
        preflight(validate_spec(SummarizeJobSpec, spec, source="test"))


def test_jsonl_columns_are_checked_against_the_first_lines(summarizer, tmp_path) -> None:
    gs.write_jsonl(str(tmp_path / "in" / "a.jsonl"), [{"body": "a cat", "id": 1}, {"body": "a dog", "id": 2}])
    spec = gs.summarize_spec(str(tmp_path / "in"), str(tmp_path / "out"), summarizer,
                             input={"uri": str(tmp_path / "in"), "id_column": "id"})
    with pytest.raises(PreflightError) as excinfo:
        preflight(validate_spec(SummarizeJobSpec, spec, source="test"))
    assert _problems(excinfo) == [
        f"input.input_column: 'text' is not in the input file {tmp_path / 'in' / 'a.jsonl'} (keys of its "
        "first 50 lines: body, id); set input.input_column to one of them"
    ]
    spec["input"]["input_column"] = "body"
    assert preflight(validate_spec(SummarizeJobSpec, spec, source="test")).listing.files


def test_sniff_names_common_files() -> None:
    assert sniff(gs.image_bytes(0, "JPEG")[:64]) == "JPEG image"
    assert sniff(gs.image_bytes(0, "PNG")[:64]) == "PNG image"
    assert sniff(gs.image_bytes(0, "WEBP")[:64]) == "WebP image"
    assert sniff(gzip.compress(b"x")) == "gzip-compressed file"
    assert sniff(zstandard.ZstdCompressor().compress(b"x")) == "zstd-compressed file"
    assert sniff(b'  {"a": 1}\n') == "JSON text" and sniff("héllo".encode()) == "text"
    assert sniff(b"") == "an empty file" and sniff(b"\x00\x01\x02\x03" * 10) == "binary data"


# --- model: a typo, a hub id the hub cannot confirm, limits ----------------------------


def test_a_model_typo_is_a_local_path_with_a_suggestion(monkeypatch, tmp_path) -> None:
    """`models/demo-captionr` where models/ exists: a path (no hub lookup), said in one line."""
    monkeypatch.chdir(REPO)
    src = _images(tmp_path / "in")
    spec = gs.caption_spec(str(src), str(tmp_path / "out"), "models/demo-captionr")
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    assert _problems(excinfo) == [
        f"model.uri: no checkpoint at '{REPO / 'models' / 'demo-captionr'}': nothing is there. Pass an existing "
        "folder (or s3:// prefix) holding config.json, weights and a tokenizer; did you mean "
        f"{DEMO_CAPTIONER}?"
    ]


def test_a_hub_id_the_hub_cannot_confirm_fails_in_one_line(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    from combiner_core import describe

    src = _images(tmp_path / "in")
    spec = gs.caption_spec(str(src), str(tmp_path / "out"), "someorg/no-such-captioner")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the suite's setting: no cached copy
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    (problem,) = _problems(excinfo)
    assert "'someorg/no-such-captioner' is no folder here" in problem and "HF_HUB_OFFLINE is set" in problem
    # online, but the hub is not reachable from here (a closed network): said at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(describe, "_reachable", lambda endpoint, timeout_s=5.0: False)
    with pytest.raises(PreflightError, match="the Hugging Face hub .* is not reachable from here"):
        _caption(spec)
    assert not (tmp_path / "out").exists()


def test_max_new_tokens_past_the_decoders_positions(tmp_path) -> None:
    """The demo captioner's GPT-2 decoder has 16 positions: an explicit 64 is a spec error
    naming the key and the limit; the default 64 is lowered to 16."""
    src = _images(tmp_path / "in")
    spec = gs.caption_spec(str(src), str(tmp_path / "out"), str(DEMO_CAPTIONER))
    spec["generation"] = {"max_new_tokens": 64}
    with pytest.raises(PreflightError) as excinfo:
        _caption(spec)
    assert _problems(excinfo) == [
        f"generation.max_new_tokens: 64 is past the 16 positions of the decoder of model.uri {DEMO_CAPTIONER} "
        "(a row can have at most 16 tokens); set it to 16 or less"
    ]
    spec["generation"] = {"strategy": "beam"}
    plan = _caption(spec).plan
    assert plan.task.params.max_new_tokens == 16 and plan.task.params.strategy == "beam"
    spec["generation"] = {"max_new_tokens": 16}
    assert _caption(spec).plan.task.params.max_new_tokens == 16


# --- compressed corpora ---------------------------------------------------------------


def test_compressed_corpora_are_default_inputs_and_read(tmp_path) -> None:
    lines = b'{"text": "a red circle", "id": "r0"}\n{"text": "a blue square", "id": "r1"}\n'
    codecs = {"a.jsonl": lines, "b.jsonl.gz": gzip.compress(lines), "c.jsonl.zst": zstandard.ZstdCompressor().compress(lines),
              "d.jsonl.xz": lzma.compress(lines), "e.json.bz2": __import__("bz2").compress(lines)}
    for name, data in codecs.items():
        gs.write_bytes(str(tmp_path / name), data)
    gs.write_bytes(str(tmp_path / "notes.md"), b"not an input")
    listing = list_inputs(str(tmp_path), format="jsonl")
    assert [Path(f).name for f in listing.files] == sorted(codecs) and len(listing.ignored) == 1
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text", id_column="id")
    for uri in listing.files:
        rows = read_shard(Shard(files=(uri,)), opts).to_pylist()
        assert [(r["id"], r["payload"], r["error_cause"]) for r in rows] == [
            ("r0", b"a red circle", ""), ("r1", b"a blue square", "")], uri
    gs.write_bytes(str(tmp_path / "t" / "x.txt.zst"), zstandard.ZstdCompressor().compress(b"one\ntwo\n"))
    text = ReaderOptions(format="text_lines", root=str(tmp_path / "t"))
    assert [r["payload"] for r in read_shard(Shard(files=(str(tmp_path / "t" / "x.txt.zst"),)), text).to_pylist()] == [
        b"one", b"two"]


def test_a_file_whose_codec_is_missing_is_one_file_level_error(tmp_path, monkeypatch) -> None:
    import sys

    gs.write_bytes(str(tmp_path / "a.jsonl.zst"), zstandard.ZstdCompressor().compress(b'{"text": "x"}\n'))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    opts = ReaderOptions(format="jsonl", root=str(tmp_path), input_column="text")
    (row,) = read_shard(Shard(files=(str(tmp_path / "a.jsonl.zst"),)), opts).to_pylist()
    assert row["id"] == "a.jsonl.zst#file" and row["error_cause"] == "missing_codec"
    assert "file-level error" in row["error_message"] and "pip install zstandard" in row["error_message"]


# --- spec files: paths relative to the file ---------------------------------------------


def test_relative_paths_in_a_spec_file_are_relative_to_its_folder(tmp_path, monkeypatch) -> None:
    project = tmp_path / "project"
    _images(project / "photos")
    (project / "specs").mkdir()
    (project / "specs" / "job.yaml").write_text(
        "input: {uri: ../photos, format: images}\n"
        "output: {uri: ../captions}\n"
        f"model: {{uri: {DEMO_CAPTIONER}}}\n"
        "generation: {max_new_tokens: 8}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(CaptionJobSpec, "../project/specs/job.yaml", ["output.uri=here"])
    assert spec.input.uri == str(project / "photos")
    assert spec.output.uri == "here"  # --set: relative to the shell's folder, made absolute by the plan
    assert preflight(spec).plan.output_uri == str(elsewhere / "here")
    hub = load_spec(CaptionJobSpec, str(project / "specs" / "job.yaml"), ["model.uri=org/captioner"])
    assert hub.model.uri == "org/captioner"
    (project / "specs" / "hub.yaml").write_text("input: {uri: ../photos, format: images}\noutput: {uri: o}\n"
                                                "model: {uri: someorg/captioner}\n")
    assert load_spec(CaptionJobSpec, str(project / "specs" / "hub.yaml")).model.uri == "someorg/captioner"


@pytest.mark.parametrize("spec_file", sorted((REPO / "jobs" / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_name_the_same_files_from_any_folder(spec_file, tmp_path, monkeypatch) -> None:
    from pipelines.finetune import FinetuneSpec
    from pipelines.generation import LabelJobSpec

    kind = spec_file.name.split("_")[0]
    model = {"caption": CaptionJobSpec, "summarize": SummarizeJobSpec, "label": LabelJobSpec,
             "finetune": FinetuneSpec}[kind]
    monkeypatch.chdir(REPO)
    here = load_spec(model, f"jobs/specs/{spec_file.name}").model_dump()
    monkeypatch.chdir(tmp_path)
    assert load_spec(model, spec_file).model_dump() == here


def test_a_label_longer_than_the_decoder_scores_is_a_spec_problem(tmp_path) -> None:
    """The demo captioner's decoder has 16 positions: a 20-word verbalization cannot be
    scored. Said on the driver, naming the label, instead of failing every model actor."""
    from pipelines.generation import LabelJobSpec

    src = _images(tmp_path / "in")
    spec = {"input": {"uri": str(src), "format": "images"}, "output": {"uri": str(tmp_path / "out")},
            "model": {"uri": str(DEMO_CAPTIONER)},
            "labels": {"circle": "a small red circle", "long": " ".join(["a large red square"] * 5)}}
    with pytest.raises(PreflightError) as excinfo:
        preflight(validate_spec(LabelJobSpec, spec, source="test"))
    assert _problems(excinfo) == ["labels.long: 'a large red square a large red square a large red square a large "
                                  "red square a large red square' is 21 tokens with eos, more than the 16 this "
                                  "model's decoder scores; use a shorter verbalization"]
    spec["labels"] = ["a small red circle", "a large blue square"]
    assert preflight(validate_spec(LabelJobSpec, spec, source="test")).plan.task.names == (
        "a small red circle", "a large blue square")


@pytest.mark.integration
def test_on_object_storage_only_our_objects_are_deleted(s3_bucket) -> None:
    """S3 (the local moto server): overwrite deletes our objects only, not a neighbour
    prefix that starts with the same name; a user's object in the prefix is refused; a
    folder marker (the S3 console's empty "folder/" object) is no file."""
    import boto3
    import fsspec

    from pipelines.generation import OutputExistsError

    fs = fsspec.filesystem("s3")
    out, bucket = f"{s3_bucket}/out", s3_bucket.removeprefix("s3://")
    OutputStore(out).prepare(mode="overwrite", fingerprint="f")
    key = "0" * 20
    for rel in (f"part-{key}.parquet", f"_errors/part-{key}.parquet", f"_commits/{key}.json", "_SUCCESS"):
        fs.pipe(f"{out}/{rel}", b"x")
    fs.pipe(f"{s3_bucket}/out-neighbour/keep.txt", b"mine")
    fs.invalidate_cache()
    assert OutputStore(out).prepare(mode="overwrite", fingerprint="g") == {}
    fs.invalidate_cache()
    assert sorted(fs.find(s3_bucket)) == [f"{bucket}/out-neighbour/keep.txt", f"{bucket}/out/_job.json"]
    fs.pipe(f"{out}/notes.txt", b"mine")
    fs.invalidate_cache()
    with pytest.raises(OutputExistsError, match=r"holds 1 file\(s\) this job did not write \(notes.txt\)"):
        OutputStore(out).prepare(mode="overwrite", fingerprint="g")
    assert fs.cat(f"{out}/notes.txt") == b"mine"
    boto3.client("s3").put_object(Bucket=bucket, Key="marked/", Body=b"")
    fs.invalidate_cache()
    assert OutputStore(f"{s3_bucket}/marked").survey().foreign == []


# --- damaged and unusual files: rows before a break are kept, the break is reported -----


def _read(uri: Path, fmt: str = "jsonl", **options) -> list[dict]:
    opts = ReaderOptions(format=fmt, root=str(uri.parent), **options)
    return read_shard(Shard(files=(str(uri),)), opts).to_pylist()


@pytest.mark.parametrize("codec", ["gz", "zst", "xz", "bz2"])
def test_a_truncated_compressed_corpus_keeps_the_lines_before_the_break(tmp_path, codec) -> None:
    """20,000 JSON lines cut short: the lines before the cut are rows; the file adds one
    file-level error row (truncated_file); zstd's silent short read is caught too."""
    import bz2

    # 20,000 lines (2.7 MB): bz2 decodes in blocks of 900 kB, so a cut at 60% leaves whole blocks
    lines = b"".join(json.dumps({"text": f"document {i} " + "word " * 20}).encode() + b"\n" for i in range(20000))
    packed = {"gz": gzip.compress, "zst": zstandard.ZstdCompressor().compress, "xz": lzma.compress,
              "bz2": bz2.compress}[codec](lines)
    (tmp_path / f"a.jsonl.{codec}").write_bytes(packed[: int(len(packed) * 0.6)])
    rows = _read(tmp_path / f"a.jsonl.{codec}", input_column="text")
    ok = [r for r in rows if not r["error_cause"]]
    assert 0 < len(ok) < 20000 and [r["payload"] for r in ok] == [json.loads(x)["text"].encode()
                                                                 for x in lines.splitlines()[: len(ok)]]
    (broken,) = [r for r in rows if r["error_cause"]]
    assert (broken["id"], broken["source_row"], broken["error_cause"]) == (f"a.jsonl.{codec}#file", -1, "truncated_file")
    assert "file-level error" in broken["error_message"] and "the rest are lost" in broken["error_message"]
    whole = tmp_path / "whole" / f"b.jsonl.{codec}"
    whole.parent.mkdir()
    whole.write_bytes(packed + packed)  # two streams back to back: both read
    assert len(_read(whole, input_column="text")) == 40000


def test_text_inputs_the_way_people_write_them(tmp_path) -> None:
    """Blank lines between paragraphs are no documents; UTF-16 is said to be UTF-16; a
    Latin-1 line in JSONL is not_utf8, not bad JSON; a truncated .txt.gz document is an
    error, not half a document."""
    (tmp_path / "notes.txt").write_bytes(b"first paragraph\n\nsecond one\n\n\nthird\n")
    rows = _read(tmp_path / "notes.txt", "text_lines")
    assert [(r["id"], r["payload"]) for r in rows] == [("notes.txt#0", b"first paragraph"),
                                                      ("notes.txt#2", b"second one"), ("notes.txt#5", b"third")]
    (tmp_path / "u16.jsonl").write_bytes('{"text": "a cat"}\n{"text": "a dog"}\n'.encode("utf-16"))
    (row,) = _read(tmp_path / "u16.jsonl", input_column="text")
    assert row["error_cause"] == "not_utf8" and "UTF-16" in row["error_message"] and row["source_row"] == -1
    (tmp_path / "latin.jsonl").write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    rows = _read(tmp_path / "latin.jsonl", input_column="text")
    assert [r["error_cause"] for r in rows] == ["", "not_utf8"]
    document = " ".join(f"sentence {i} of a long document." for i in range(2000)).encode()
    (tmp_path / "doc.txt.gz").write_bytes(gzip.compress(document)[:2000])
    (row,) = _read(tmp_path / "doc.txt.gz", "text_files")
    assert (row["id"], row["error_cause"], row["payload"]) == ("doc.txt.gz", "truncated_file", None)


def test_table_values_that_are_not_inputs_say_what_they_are(tmp_path) -> None:
    rows = [{"id": "a", "image": {"bytes": gs.image_bytes(0), "path": "a.png"}},
            {"id": "b", "image": None},
            {"id": "c", "image": {"bytes": None, "path": "/data/c.jpg"}},
            {"id": None, "image": {"bytes": gs.image_bytes(1), "path": None}}]
    gs.write_parquet(str(tmp_path / "hf.parquet"), rows)
    got = _read(tmp_path / "hf.parquet", "parquet", input_column="image", id_column="id")
    assert [(r["id"], r["error_cause"]) for r in got] == [
        ("a", ""), ("b", "null_value"), ("c", "no_image_bytes"), ("hf.parquet#3", "missing_id")]
    assert "only the path '/data/c.jpg'" in got[2]["error_message"] and "is null in this row" in got[1]["error_message"]


def test_preflight_reads_past_an_unreadable_first_file_and_refuses_a_json_array(summarizer, tmp_path) -> None:
    """A first file that cannot be read is that file's error row (as a later one would
    be), not a spec problem; a pretty-printed JSON array is not JSON Lines."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-broken.jsonl.gz").write_bytes(b"plain text named .gz")
    gs.write_jsonl(str(tmp_path / "in" / "b.jsonl"), [{"text": "a cat"}])
    spec = gs.summarize_spec(str(tmp_path / "in"), str(tmp_path / "out"), summarizer,
                             input={"uri": str(tmp_path / "in"), "format": "jsonl"})
    assert preflight(validate_spec(SummarizeJobSpec, spec, source="test")).listing.files
    (tmp_path / "arr").mkdir()
    (tmp_path / "arr" / "export.json").write_text(json.dumps([{"text": f"row {i}"} for i in range(30)], indent=2))
    spec["input"]["uri"] = str(tmp_path / "arr")
    with pytest.raises(PreflightError, match=r"hold no JSON object: JSON Lines is one object per line"):
        preflight(validate_spec(SummarizeJobSpec, spec, source="test"))
    (tmp_path / "u16").mkdir()
    (tmp_path / "u16" / "a.jsonl").write_bytes('{"text": "x"}\n'.encode("utf-16"))
    spec["input"]["uri"] = str(tmp_path / "u16")
    with pytest.raises(PreflightError, match=r"looks like UTF-16 text, not jsonl input; convert it to UTF-8"):
        preflight(validate_spec(SummarizeJobSpec, spec, source="test"))


def test_names_like_ours_that_are_not_ours_are_refused_and_kept(captioner, tmp_path) -> None:
    """A user's notes under an earlier output's _staging/, a user's own _lease.json, and an
    output that is a file: refused before anything is written, nothing touched."""
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    OutputStore(str(out)).prepare(mode="overwrite", fingerprint="f")  # an earlier job's folder
    (out / "_staging" / "mywork").mkdir(parents=True)
    (out / "_staging" / "mywork" / "draft.csv").write_text("precious")
    (out / "_staging" / "readme.md").write_text("precious")
    lease_only = tmp_path / "leasecase"
    lease_only.mkdir()
    (lease_only / "_lease.json").write_text('{"holder": "airflow-task-17"}')
    (tmp_path / "afile.txt").write_text("hello")
    for output, said in ((out, "holds 2 file(s) this job did not write (_staging/mywork/draft.csv, _staging/readme.md)"),
                         (lease_only, "holds 1 file(s) this job did not write (_lease.json)"),
                         (tmp_path / "afile.txt", "is a file; name a folder")):
        for mode in ("error_if_exists", "resume", "overwrite"):
            spec = gs.caption_spec(str(src), str(output), captioner)
            spec["output"]["mode"] = mode
            with pytest.raises(PreflightError, match=re.escape(said)):
                _caption(spec)
    assert (out / "_staging" / "mywork" / "draft.csv").read_text() == "precious"
    assert (lease_only / "_lease.json").read_text() == '{"holder": "airflow-task-17"}'
    assert (tmp_path / "afile.txt").read_text() == "hello"


def test_a_run_that_committed_nothing_does_not_block_the_next(captioner, tmp_path) -> None:
    """A run that stopped before its first commit (a model that would not load) left only
    _job.json and its lease: the next run starts in error_if_exists, with another model too."""
    out = tmp_path / "out"
    OutputStore(str(out)).prepare(mode="error_if_exists", fingerprint="another model")
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(out), captioner)
    assert _caption(spec).plan.output_mode == "error_if_exists"
    spec["output"]["mode"] = "resume"
    assert _caption(spec).plan.output_mode == "resume"
    assert OutputStore(str(out)).prepare(mode="resume", fingerprint="this job") == {}


def test_weights_cut_short_are_found_before_the_job(captioner, tmp_path) -> None:
    """A copy of the model whose safetensors file was cut in half: the manifest's byte
    count and the file's own header say so, without reading the weights."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(captioner, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(tmp_path / "out"), str(broken))
    with pytest.raises(PreflightError, match=rf"model.safetensors is {len(data) // 2} bytes, the manifest says "
                                             rf"{len(data)}\. The copy is incomplete"):
        _caption(spec)
    (broken / "combiner_manifest.json").unlink()  # no manifest: the header alone tells
    with pytest.raises(PreflightError, match=rf"model.safetensors is {len(data) // 2} bytes, its header says {len(data)}"):
        _caption(spec)


def test_label_sets_that_cannot_work_are_spec_problems(tmp_path) -> None:
    """On the demo captioner (a word-level vocabulary of shape captions): words it does not
    know, two labels that come out as the same tokens, one label, an empty name."""
    from pipelines.generation import LabelJobSpec

    src = _images(tmp_path / "in")
    spec = {"input": {"uri": str(src), "format": "images"}, "output": {"uri": str(tmp_path / "out")},
            "model": {"uri": str(DEMO_CAPTIONER)},
            "labels": {"landscape": "a photo of a landscape", "portrait": "a portrait of a person",
                       "circle": "a small red circle"}}
    with pytest.raises(PreflightError) as excinfo:
        preflight(validate_spec(LabelJobSpec, spec, source="test"))
    problems = _problems(excinfo)
    assert problems[0].startswith("labels.landscape: most of 'a photo of a landscape' is words this model's "
                                  "tokenizer does not know ([UNK])")
    assert problems[-1] == ("labels.portrait: 'a portrait of a person' is the same tokens as 'a photo of a "
                            "landscape' of label 'landscape' for this model, so the two labels cannot be told apart")
    with pytest.raises(SpecError, match=r"labels: one label \('circle'\) wins every row with probability 1"):
        validate_spec(LabelJobSpec, {**spec, "labels": ["circle"]}, source="test")
    with pytest.raises(SpecError, match="labels: a label name is empty"):
        validate_spec(LabelJobSpec, {**spec, "labels": {"": "a circle", "square": "a square"}}, source="test")


# --- second round of a new-user trial -----------------------------------------------------


def test_resume_compares_what_paths_name_and_which_weights_wrote_the_rows(captioner, tmp_path, monkeypatch) -> None:
    """A resume accepts the same input spelled otherwise (./in, in/, in//x), and refuses a
    model whose weights were replaced at the same model.uri (a re-saved 'latest')."""
    import shutil

    model = tmp_path / "latest"
    shutil.copytree(captioner, model)
    _images(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    spec = gs.caption_spec("in", "out", str(model))
    spec["output"]["mode"] = "resume"
    plan = _caption(spec).plan
    store = OutputStore(plan.output_uri)
    store.prepare(mode="resume", fingerprint=plan.fingerprint, weights_id=plan.model.weights_id)
    (tmp_path / "out" / f"part-{'1' * 20}.parquet").write_bytes(b"rows of the first run")
    for spelled in ("./in", "in/", str(tmp_path / "in"), f"{tmp_path}//in"):
        assert _caption({**spec, "input": {**spec["input"], "uri": spelled}}).plan.fingerprint == plan.fingerprint
    manifest = json.loads((model / "combiner_manifest.json").read_text())
    manifest["weights_sha256"] = "f" * 64  # saved again with other weights
    (model / "combiner_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PreflightError, match="was written with other weights at the same model.uri"):
        _caption(spec)


def test_inputs_people_name_their_own_way_are_read(tmp_path) -> None:
    """Camera files named _DSC0001.JPG, a symlinked folder, a folder named 'photos [2024]'
    are inputs; job-output files (_SUCCESS, _errors/) are not; hidden files are reported."""
    folder = tmp_path / "photos [2024]"
    (folder / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("_DSC0001.JPG", "DSC0002.JPG", "real/a.png", ".DS_Store", "_SUCCESS"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "elsewhere" / "b.png").write_bytes(b"x")
    (folder / "linked").symlink_to(tmp_path / "elsewhere")
    (folder / "loop").symlink_to(folder)  # a link back up the tree is walked once
    (folder / "_errors").mkdir()
    (folder / "_errors" / "part-x.png").write_bytes(b"x")
    listing = list_inputs(str(folder), format="images")
    assert [Path(f).relative_to(folder).as_posix() for f in listing.files] == [
        "DSC0002.JPG", "_DSC0001.JPG", "linked/b.png", "real/a.png"]
    assert [Path(f).name for f in listing.ignored] == [".DS_Store"]


def test_spec_values_that_would_be_read_otherwise_are_refused(tmp_path) -> None:
    from pipelines import parse_overrides
    from pipelines.generation import LabelJobSpec

    with pytest.raises(SpecError, match="holds ' #', which YAML reads as the start of a comment"):
        parse_overrides(["input.uri=data/exports #2"])
    assert parse_overrides(['input.uri="data/exports #2"', "output.uri=run#3"]) == {
        "input": {"uri": "data/exports #2"}, "output": {"uri": "run#3"}}
    base = {"input": {"uri": "x", "format": "images"}, "model": {"uri": "m"}}
    with pytest.raises(SpecError, match=r"output.uri: 's3://lake/in\?x' holds \?, which object stores"):
        validate_spec(CaptionJobSpec, {**base, "output": {"uri": "s3://lake/in?x"}}, source="t")
    with pytest.raises(SpecError, match="input.uri: String should have at least 1 character"):
        validate_spec(CaptionJobSpec, {**base, "input": {"uri": "", "format": "images"}, "output": {"uri": "o"}},
                      source="t")
    with pytest.raises(SpecError, match=r"template: 'topic: \{text\} \{foo\}' has a placeholder other than \{text\}"):
        validate_spec(LabelJobSpec, {**base, "output": {"uri": "o"}, "labels": ["a", "b"],
                                     "input": {"uri": "x", "format": "jsonl", "input_column": "t"},
                                     "template": "topic: {text} {foo}"}, source="t")
    (tmp_path / "dup.yaml").write_text("input: {uri: x, format: images}\noutput: {uri: o}\noutput: {uri: p}\n")
    with pytest.raises(SpecError, match="the key 'output' is given twice"):
        load_spec(CaptionJobSpec, tmp_path / "dup.yaml")
    with pytest.raises(SpecError, match="is a folder; --spec takes a YAML file"):
        load_spec(CaptionJobSpec, tmp_path)
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(SpecError, match="is not a text file"):
        load_spec(CaptionJobSpec, tmp_path / "bin.yaml")


def test_an_output_inside_another_jobs_output_is_refused(captioner, tmp_path) -> None:
    OutputStore(str(tmp_path / "earlier")).prepare(mode="overwrite", fingerprint="f")
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(tmp_path / "earlier" / "more"), captioner)
    with pytest.raises(PreflightError, match=rf"is inside the output of another job \({tmp_path / 'earlier'}\)"):
        _caption(spec)


def test_odd_bytes_and_headers_are_named_not_crashed_on(summarizer, captioner, tmp_path) -> None:
    """A first file with a Latin-1 line is text (its rows say not_utf8), not 'binary'; a
    plain file named .gz is unreadable, not truncated; ids that are not ids; a
    safetensors header with a tensor of an unknown dtype or a broken entry."""
    import shutil

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes('{"text": "café"}\n{"text": "ok"}\n'.encode("latin-1"))
    spec = gs.summarize_spec(str(tmp_path / "in"), str(tmp_path / "out"), summarizer,
                             input={"uri": str(tmp_path / "in"), "format": "jsonl"})
    assert preflight(validate_spec(SummarizeJobSpec, spec, source="test")).listing.files
    assert sniff("café au lait".encode("latin-1")) == "non-UTF-8 text"
    (tmp_path / "plain.jsonl.gz").write_bytes(b'{"text": "x"}\n')
    (row,) = _read(tmp_path / "plain.jsonl.gz", input_column="text")
    assert row["error_cause"] == "unreadable_file" and "is not gzip data" in row["error_message"]
    gs.write_jsonl(str(tmp_path / "ids" / "a.jsonl"), [{"k": "", "text": "a"}, {"k": True, "text": "b"},
                                                       {"k": ["x"], "text": "c"}, {"k": 7, "text": "d"}])
    rows = _read(tmp_path / "ids" / "a.jsonl", input_column="text", id_column="k")
    assert [(r["id"], r["error_cause"]) for r in rows] == [
        ("a.jsonl#0", "missing_id"), ("True", "bad_id"), ("['x']", "bad_id"), ("7", "")]
    broken = tmp_path / "broken"
    shutil.copytree(captioner, broken)
    (broken / "combiner_manifest.json").unlink()
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    for damage, said in ((lambda h: h[name].update(dtype="Q99"), f"has tensor '{name}' of unknown dtype 'Q99'"),
                         (lambda h: h[name].pop("data_offsets"), f"has a header entry '{name}' that is not a tensor")):
        changed = json.loads(json.dumps(header))
        damage(changed)
        text = json.dumps(changed, separators=(",", ":")).encode().ljust(length)  # as long as before
        weights.write_bytes(data[:8] + text + data[8 + length :])
        spec = gs.caption_spec(str(_images(tmp_path / "imgs")), str(tmp_path / "o2"), str(broken))
        with pytest.raises(PreflightError, match=re.escape(said)):
            _caption(spec)


def test_gpus_this_machine_does_not_have_are_a_spec_problem_without_a_cluster(captioner, tmp_path, monkeypatch) -> None:
    from ray._private.accelerators import nvidia_gpu

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(nvidia_gpu.NvidiaGPUAcceleratorManager, "get_current_node_num_accelerators",
                        staticmethod(lambda: 0))
    spec = gs.caption_spec(str(_images(tmp_path / "in")), str(tmp_path / "out"), captioner)
    spec["resources"]["num_gpus"] = 1
    with pytest.raises(PreflightError, match="resources.num_gpus: 1 per model actor, but this machine has 0 GPU"):
        _caption(spec)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster: its GPU nodes may be starting
    assert _caption(spec).plan.resources.num_gpus == 1


@pytest.mark.integration
def test_an_output_bucket_that_does_not_exist_is_not_created(captioner, s3_bucket, tmp_path) -> None:
    spec = gs.caption_spec(str(_images(tmp_path / "in")), "s3://no-such-bucket-zz/out", captioner)
    with pytest.raises(PreflightError, match="the bucket 'no-such-bucket-zz' of s3://no-such-bucket-zz/out does not exist"):
        _caption(spec)
    spec["output"]["uri"] = f"{s3_bucket}/out"
    assert _caption(spec).plan.output_uri == f"{s3_bucket}/out"
