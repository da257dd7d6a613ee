"""Shared machinery for job specs: strict pydantic models, YAML loading, --set
overrides, and one error listing every problem with its YAML key.

Job-specific spec models live with their pipelines (generation, finetune); they
build on `StrictModel` and are loaded with `load_spec`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSource(StrictModel):
    """Where a combiner comes from, and what loading it may do."""

    uri: str = Field(description="combiner checkpoint: local folder, s3:// prefix, or hub id when online")
    allow_pickle: bool = Field(
        False, description="permit .bin (pickle) weights when a checkpoint has no safetensors"
    )
    trust_remote_code: bool = Field(
        False, description="permit checkpoints whose config needs custom Python code"
    )


class SpecError(ValueError):
    """A spec failed validation; `problems` holds one 'key: message' line each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid spec {source} ({len(self.problems)} problem(s)):\n{lines}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`--set a.b=1 --set c=[x, y]` -> {"a": {"b": 1}, "c": ["x", "y"]}; values are YAML."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. output.mode=resume")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {key}: value {raw!r} is not valid YAML ({exc.__class__.__name__})")
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {key}: '{part}' was already set to a value, not a section")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise SpecError("--set", problems)
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: Mapping[str, Any]) -> list[str]:
    """One 'key: message' line per problem. A cross-field check reports several
    problems, one per line, each already starting with its own key."""
    key = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return [f"{key}: unknown key; remove it or check its spelling"]
    if err["type"] == "missing":
        return [f"{key}: required; add it"]
    if err["type"] == "value_error" and (not key or "\n" in message):
        prefix = f"{key}." if key else ""
        return [f"{prefix}{line}" for line in message.splitlines() if line.strip()]
    key = key or "(top level)"
    if "input" in err and not isinstance(err["input"], Mapping):
        return [f"{key}: {message} (got {err['input']!r})"]
    return [f"{key}: {message}"]


def validate_spec(model: type[T], data: Mapping[str, Any], *, source: str) -> T:
    """Validate `data` as `model`, raising one SpecError listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [line for e in exc.errors() for line in _format_errors(e)]) from None


def load_spec(
    model: type[T],
    path: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    default: Mapping[str, Any] | None = None,
) -> T:
    """Read a YAML spec (or `default` when path is None), apply --set overrides, validate."""
    if path is None:
        if default is None:
            raise SpecError("(none)", ["no --spec given and this job has no default spec"])
        data: Any = dict(default)
        source = "(built-in default)"
    else:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SpecError(source, [f"file not found: {path}"]) from None
        except yaml.YAMLError as exc:
            raise SpecError(source, [f"not valid YAML: {exc}"]) from None
        if not isinstance(data, Mapping):
            raise SpecError(source, [f"top level must be a mapping of keys, got {type(data).__name__}"])
    sets = list(overrides)
    if sets:
        data = deep_merge(data, parse_overrides(sets))
        source += " with --set " + " ".join(sets)
    return validate_spec(model, data, source=source)


def canonical_sha256(data: Any) -> str:
    """sha256 of `data` as canonical JSON (sorted keys, no spaces): equal data, equal hash."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_hash(spec: BaseModel) -> str:
    """sha256 of a spec's (or any pydantic model's) canonical JSON: lineage for every output row."""
    return canonical_sha256(spec.model_dump(mode="json"))
