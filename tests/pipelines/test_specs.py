"""Generation job specs: shipped examples validate, bad specs list every problem with its key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines import SpecError, load_spec, validate_spec
from pipelines.generation import CaptionJobSpec, LabelJobSpec, SummarizeJobSpec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "jobs" / "specs").glob("*.yaml"))
GENERATION_SPECS = [p for p in SPECS if p.name.startswith(("caption_", "summarize_", "label_"))]
SPEC_CLASSES = {"caption": CaptionJobSpec, "summarize": SummarizeJobSpec, "label": LabelJobSpec}


def _model(path: Path):
    return SPEC_CLASSES[path.name.split("_")[0]]


def test_generation_specs_are_shipped():
    names = {p.name.split("_")[0] for p in GENERATION_SPECS}
    assert names == set(SPEC_CLASSES)


@pytest.mark.parametrize("path", GENERATION_SPECS, ids=lambda p: p.name)
def test_shipped_spec_validates(path):
    spec = load_spec(_model(path), path)
    assert spec.output.mode in ("error_if_exists", "resume", "overwrite")
    assert spec.model.uri and spec.input.uri


@pytest.mark.parametrize(
    ("script", "spec_class", "model"),
    [("caption_dataset", CaptionJobSpec, "demo-captioner"), ("label_dataset", LabelJobSpec, "demo-captioner"),
     ("summarize_corpus", SummarizeJobSpec, "demo-summarizer")],
)
def test_bare_job_default_specs_validate_and_point_at_bundled_files(script, spec_class, model):
    import importlib.util

    loader = importlib.util.spec_from_file_location(script, REPO / "jobs" / f"{script}.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    spec = load_spec(spec_class, None, default=module.DEFAULT_SPEC)
    assert Path(spec.model.uri) == REPO / "models" / model
    assert spec.input.reference_column and spec.output.uri.startswith("outputs/")
    assert list(Path(spec.input.uri.split("*")[0]).glob("*.parquet" if "*" in spec.input.uri else "*.jsonl"))


def test_bad_spec_lists_every_problem_with_its_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "input: {uri: x, format: tiff}\n"
        "output: {uri: y, mode: append}\n"
        "model: {uri: m}\n"
        "batch_size: 0\n"
        "resources: {workers: 0, gpus: 1}\n"
        "generation: {strategy: beam, num_beams: 1}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(CaptionJobSpec, path)
    text = str(err.value)
    for key in ("input.format", "output.mode", "batch_size", "resources.workers", "resources.gpus", "generation"):
        assert key in text, key
    assert "unknown key" in text and "num_beams" in text


def test_set_overrides_with_dotted_keys():
    base = {"input": {"uri": "a"}, "output": {"uri": "b"}, "model": {"uri": "c"}}
    spec = load_spec(
        CaptionJobSpec, None, ["output.mode=resume", "resources.num_gpus=1", "generation.max_new_tokens=7"],
        default=base,
    )
    assert spec.output.mode == "resume" and spec.resources.num_gpus == 1
    assert spec.generation.max_new_tokens == 7


def test_cross_field_problems_name_keys():
    data = {
        "input": {"uri": "a", "format": "images", "id_column": "id"},
        "output": {"uri": "b"},
        "model": {"uri": "c"},
        "resources": {"num_gpus": 1.5},
    }
    with pytest.raises(SpecError) as err:
        validate_spec(CaptionJobSpec, data, source="t")
    assert "input.id_column" in str(err.value) and "resources.num_gpus" in str(err.value)


@pytest.mark.parametrize("spec_class", [CaptionJobSpec, SummarizeJobSpec, LabelJobSpec])
def test_model_quantize_int8_cpu_float32_only(spec_class):
    """model.quantize: int8 validates on CPU in float32 (dtype auto or float32); with GPUs or
    a half-precision dtype the error names model.quantize and the conflicting key."""
    base = {"input": {"uri": "a"}, "output": {"uri": "b"}, "model": {"uri": "c", "quantize": "int8"}}
    if spec_class is LabelJobSpec:
        base["labels"] = ["x", "y"]
        base["input"] = {"uri": "a", "input_column": "text"}
    spec = validate_spec(spec_class, base, source="t")
    assert spec.model.quantize == "int8"
    assert validate_spec(spec_class, {**base, "model": {"uri": "c", "quantize": "int8", "dtype": "float32"}},
                         source="t").model.quantize == "int8"
    with pytest.raises(SpecError) as err:
        validate_spec(spec_class, {**base, "resources": {"num_gpus": 1}}, source="t")
    assert "model.quantize" in str(err.value) and "resources.num_gpus" in str(err.value)
    with pytest.raises(SpecError) as err:
        validate_spec(spec_class, {**base, "model": {"uri": "c", "quantize": "int8", "dtype": "bfloat16"}},
                      source="t")
    assert "model.quantize" in str(err.value) and "model.dtype" in str(err.value)
    with pytest.raises(SpecError) as err:
        validate_spec(spec_class, {**base, "model": {"uri": "c", "quantize": "int4"}}, source="t")
    assert "model.quantize" in str(err.value)
    # int8 outputs differ from float32's: a resume must not mix them; float jobs keep their fingerprint
    plain = validate_spec(spec_class, {**base, "model": {"uri": "c"}}, source="t")
    assert spec.job_fingerprint() != plain.job_fingerprint()


def test_summarize_date_fills_uris_default_today():
    data = {
        "input": {"uri": "s3://b/in/date={date}/"},
        "output": {"uri": "s3://b/out/date={date}"},
        "model": {"uri": "m"},
    }
    spec = validate_spec(SummarizeJobSpec, data, source="t")
    filled = spec.resolved(today=dt.date(2026, 2, 3))
    assert filled.input.uri == "s3://b/in/date=2026-02-03/" and filled.output.uri == "s3://b/out/date=2026-02-03"
    assert spec.resolved().date == dt.datetime.now(dt.UTC).date().isoformat()
    pinned = validate_spec(SummarizeJobSpec, {**data, "date": "2025-12-31"}, source="t").resolved()
    assert pinned.output.uri.endswith("date=2025-12-31")
    with pytest.raises(SpecError, match="date"):
        validate_spec(SummarizeJobSpec, {**data, "date": "yesterday"}, source="t")


def test_fingerprint_ignores_mode_and_resources_but_not_model():
    data = {"input": {"uri": "a"}, "output": {"uri": "b"}, "model": {"uri": "c"}}
    a = validate_spec(CaptionJobSpec, data, source="t")
    b = validate_spec(CaptionJobSpec, {**data, "output": {"uri": "b", "mode": "resume"}, "batch_size": 3}, source="t")
    c = validate_spec(CaptionJobSpec, {**data, "model": {"uri": "other"}}, source="t")
    assert a.job_fingerprint() == b.job_fingerprint() != c.job_fingerprint()


def test_shard_size_is_no_part_of_the_fingerprint():
    """input.shard_mib cuts the same rows into other commit units: a resume may change it,
    and outputs written before the key existed keep their fingerprint (that of a spec
    dumped without it)."""
    from pipelines.specs import canonical_sha256

    data = {"input": {"uri": "/in", "format": "parquet", "input_column": "image"}, "output": {"uri": "/out"},
            "model": {"uri": "/m"}}
    a = validate_spec(CaptionJobSpec, data, source="t")
    b = validate_spec(CaptionJobSpec, {**data, "input": {**data["input"], "shard_mib": 0.5}}, source="t")
    assert a.input.shard_mib == 64 and b.input.shard_mib == 0.5
    assert a.job_fingerprint() == b.job_fingerprint()
    before = a.model_dump(mode="json", exclude={"output", "batch_size", "resources", "date"})
    del before["input"]["shard_mib"]
    del before["model"]["quantize"]  # a float job's dump before model.quantize existed
    assert a.job_fingerprint() == canonical_sha256(before)
    with pytest.raises(SpecError, match="shard_mib"):
        validate_spec(CaptionJobSpec, {**data, "input": {**data["input"], "shard_mib": 0}}, source="t")


def test_one_input_vocabulary_with_deprecated_names(caplog):
    """image_column / text_column / image_folder still work for a release, each logged once."""
    from pipelines.finetune import FinetuneSpec

    data = {"input": {"uri": "a", "format": "parquet", "image_column": "img"}, "output": {"uri": "b"},
            "model": {"uri": "c"}}
    with caplog.at_level("WARNING", logger="pipelines"):
        spec = validate_spec(CaptionJobSpec, data, source="t")
    assert spec.input.input_column == "img" and spec.reader_options().input_column == "img"
    assert "input.image_column is deprecated; it is now input.input_column" in caplog.text
    text = validate_spec(
        SummarizeJobSpec, {**data, "input": {"uri": "a", "format": "jsonl", "text_column": "body"}}, source="t"
    )
    assert text.input.input_column == "body"
    both = {**data, "input": {"uri": "a", "format": "parquet", "image_column": "x", "input_column": "y"}}
    with pytest.raises(SpecError, match="input.image_column: unknown key"):
        validate_spec(CaptionJobSpec, both, source="t")
    source = FinetuneSpec.model_fields["data"].annotation.model_fields["train"].annotation
    folder = source.model_validate({"uri": "/data/pics", "format": "image_folder"})
    assert folder.format == "images" and folder.pairs_reader().captions_file == "/data/pics/captions.jsonl"


def test_input_cross_checks_name_their_keys():
    bad = {
        "input": {"uri": "a", "format": "images", "reference_column": "cap", "input_column": None},
        "output": {"uri": "b"},
        "model": {"uri": "c"},
    }
    with pytest.raises(SpecError) as err:
        validate_spec(CaptionJobSpec, {**bad, "input": {**bad["input"], "captions_file": None}}, source="t")
    assert "input.reference_column: only used with format parquet or jsonl" in str(err.value)
    with pytest.raises(SpecError, match="input.format: images, but this job reads texts"):
        validate_spec(SummarizeJobSpec, {**bad, "input": {"uri": "a", "format": "images"}}, source="t")
    with pytest.raises(SpecError, match="input.captions_file: only used with format images"):
        validate_spec(CaptionJobSpec, {**bad, "input": {"uri": "a", "format": "parquet", "captions_file": "c"}},
                      source="t")


def test_label_spec_checks_name_their_keys():
    data = {"input": {"uri": "a", "format": "images"}, "output": {"uri": "b"}, "model": {"uri": "c"},
            "labels": {"cat": ["cat", " "], "dog": "dog"}, "template": "no placeholder"}
    with pytest.raises(SpecError) as err:
        validate_spec(LabelJobSpec, data, source="t")
    text = str(err.value)
    assert "labels.cat: every verbalization must be a non-empty text" in text
    assert "template: 'no placeholder' has no {text}" in text and "template: only for text inputs" in text
    ok = validate_spec(LabelJobSpec, {**data, "labels": ["cat", "dog"], "template": None}, source="t")
    task = ok.task()
    assert task.names == ("cat", "dog") and task.verbalizations == (("cat",), ("dog",))
