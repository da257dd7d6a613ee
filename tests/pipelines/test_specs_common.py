"""The shared spec machinery: YAML + --set overrides, one error listing every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from pipelines import ModelSource, SpecError, StrictModel, load_spec, parse_overrides, spec_hash


class _Output(StrictModel):
    uri: str = Field(description="where")
    mode: str = Field("resume", description="how")


class _Job(StrictModel):
    model: ModelSource = Field(description="model")
    output: _Output = Field(description="output")
    batch_size: int = Field(8, ge=1, description="rows per batch")


def test_overrides_are_dotted_and_yaml_typed() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e=true"]) == {
        "a": {"b": 1, "c": "x"},
        "d": [1, 2],
        "e": True,
    }
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_overrides(["novalue"])


def test_every_problem_is_listed_with_its_key(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("model: {uri: m, allow_pikle: true}\noutput: {mode: resume}\nbatch_size: 0\n")
    with pytest.raises(SpecError) as err:
        load_spec(_Job, spec)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "model.allow_pikle: unknown key" in message
    assert "output.uri: required" in message
    assert "batch_size: Input should be greater than or equal to 1 (got 0)" in message


def test_set_overrides_win_and_hash_changes(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("model: {uri: m}\noutput: {uri: out}\n")
    base = load_spec(_Job, spec)
    changed = load_spec(_Job, spec, ["batch_size=32", "output.mode=overwrite"])
    assert (changed.batch_size, changed.output.mode) == (32, "overwrite")
    assert spec_hash(base) != spec_hash(changed)
    assert spec_hash(base) == spec_hash(load_spec(_Job, spec))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_spec(_Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(_Job, bad)


def test_set_replaces_a_mapping_value_and_merges_sections(tmp_path: Path) -> None:
    """--set labels={...} replaces the label set (a value), while --set output.mode keeps
    output.uri (a section merges key by key)."""
    from pipelines.generation import LabelJobSpec

    spec = tmp_path / "job.yaml"
    spec.write_text("input: {uri: x, format: images}\noutput: {uri: out}\nmodel: {uri: m}\n"
                    "labels: {circle: a circle, square: a square}\n")
    loaded = load_spec(LabelJobSpec, spec, ["labels={indoor: a small photo, outdoor: a large photo}",
                                            "output.mode=resume"])
    assert loaded.labels == {"indoor": "a small photo", "outdoor": "a large photo"}
    assert (loaded.output.uri, loaded.output.mode) == (str(tmp_path / "out"), "resume")


def test_yaml_typing_surprises_are_explained(tmp_path: Path) -> None:
    """Dates stay text (2026-02-30 too, for the date check to judge); a value YAML read as a
    mapping or boolean where text belongs says to quote it."""
    from pipelines.generation import LabelJobSpec, SummarizeJobSpec

    assert parse_overrides(["date=2026-01-31"]) == {"date": "2026-01-31"}
    spec = tmp_path / "job.yaml"
    spec.write_text("input: {uri: x}\noutput: {uri: out}\nmodel: {uri: m}\ndate: 2026-01-31\n")
    assert load_spec(SummarizeJobSpec, spec).date == "2026-01-31"
    with pytest.raises(SpecError, match="date: '2026-02-30' is not a YYYY-MM-DD date"):
        load_spec(SummarizeJobSpec, spec, ["date=2026-02-30"])
    labels = tmp_path / "labels.yaml"
    labels.write_text("input: {uri: x, format: images}\noutput: {uri: out}\nmodel: {uri: m}\nlabels: [a, b]\n")
    with pytest.raises(SpecError) as err:
        load_spec(LabelJobSpec, labels, ["template=topic: {text}"])
    assert "template: Input should be a valid string (YAML read {'topic': {'text': None}} as a mapping; put the " \
           "value in quotes" in str(err.value)
    with pytest.raises(SpecError, match=r"labels: YAML reads yes, no, on, off, true, false as booleans"):
        load_spec(LabelJobSpec, labels, ["labels=[yes, no]"])
