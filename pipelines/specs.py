"""Shared machinery for job specs: strict pydantic models, YAML loading, --set
overrides, and one error listing every problem with its YAML key.

Job-specific spec models live with their pipelines (generation, finetune); they
build on `StrictModel` and are loaded with `load_spec`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import JobError

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)


def path_field(default: Any = ..., *, description: str, hub_ids: bool = False, **kwargs: Any) -> Any:
    """A Field holding a local path or a URI. In a spec file, a relative local path is
    relative to the file's folder (see load_spec); with `hub_ids`, a relative name that
    is no path there stays as written (a hub id such as "org/model")."""
    return Field(default, description=description, json_schema_extra={"spec_path": "hub" if hub_ids else "path"},
                 **kwargs)


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSource(StrictModel):
    """Where a combiner comes from, and what loading it may do."""

    uri: str = path_field(description="combiner checkpoint: local folder, s3:// prefix, or hub id", hub_ids=True)
    allow_pickle: bool = Field(
        False, description="permit .bin (pickle) weights when a checkpoint has no safetensors"
    )
    trust_remote_code: bool = Field(
        False, description="permit checkpoints whose config needs custom Python code"
    )


class SpecError(JobError, ValueError):
    """A spec failed validation; `problems` holds one 'key: message' line each."""

    headline = "invalid spec {source}"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.headline.format(source=source)} ({len(self.problems)} problem(s)):\n{lines}")


class _SpecLoader(yaml.SafeLoader):
    """YAML without timestamps: `date: 2026-01-31` stays the text a spec field expects
    (PyYAML would make it a datetime.date, and raise on 2026-02-30); a key given twice in
    one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


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
        if raw.strip()[:1] not in ("'", '"') and re.search(r"(^|\s)#", raw):
            # YAML would read the rest as a comment and drop it: a path cut short in silence.
            problems.append(f"--set {key}: {raw!r} holds ' #', which YAML reads as the start of a comment; "
                            f"quote the value: --set '{key}=\"{raw}\"'")
            continue
        try:
            value = _yaml(raw) if raw.strip() else ""
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


def deep_merge(
    base: Mapping[str, Any], override: Mapping[str, Any], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """`override` laid over `base`, section by section.

    With `model`, only its sections (fields holding a pydantic model) merge: a field whose
    value is a mapping of its own (a label set) is replaced whole, as a user who sets it
    expects. Without `model`, every mapping merges.
    """
    merged = dict(base)
    for key, value in override.items():
        section = None
        if model is not None and key in model.model_fields:
            section = _model_in(model.model_fields[key].annotation)
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and (model is None or section):
            merged[key] = deep_merge(merged[key], value, section)
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
    value = err.get("input")
    if err["type"] == "string_type" and isinstance(value, (Mapping, list, bool, int, float)):
        # YAML typed the value: `topic: {text}` is a mapping, yes/no are booleans.
        kind = {dict: "mapping", list: "list", bool: "boolean"}.get(type(value), type(value).__name__)
        return [f"{key}: {message} (YAML read {value!r} as a {kind}; put the value in quotes, e.g. "
                f"--set '{key}=\"...\"' or {key.rsplit('.', 1)[-1]}: \"...\" in the file)"]
    if "input" in err and not isinstance(value, Mapping):
        return [f"{key}: {message} (got {value!r})"]
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
    unset_with: Mapping[str, Sequence[str]] | None = None,
) -> T:
    """Read a YAML spec (or `default` when path is None), apply --set overrides, validate.

    Relative local paths in the file (fields made with `path_field`) are relative to
    the file's folder, so a spec runs the same from any folder; --set values and the
    default's paths are taken as given (relative to the shell's folder). A --set of a
    field replaces it (sections merge key by key). `unset_with` maps a key to keys that
    belong to its value: when --set gives the key but not them, the file's (or the
    default's) values of them are dropped, e.g. {"output.uri": ["output.mode"]}: a mode
    chosen for one output is not carried to another.
    """
    if path is None:
        if default is None:
            raise SpecError("(none)", ["no --spec given and this job has no default spec"])
        data: Any = dict(default)
        source = "(built-in default)"
    else:
        source = str(path)
        try:
            data = _yaml(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SpecError(source, [f"file not found: {path}"]) from None
        except IsADirectoryError:
            raise SpecError(source, [f"{path} is a folder; --spec takes a YAML file"]) from None
        except UnicodeDecodeError:
            raise SpecError(source, [f"{path} is not a text file (not UTF-8); --spec takes a YAML file"]) from None
        except yaml.YAMLError as exc:
            raise SpecError(source, [f"not valid YAML: {exc}"]) from None
        if not isinstance(data, Mapping):
            raise SpecError(source, [f"top level must be a mapping of keys, got {type(data).__name__}"])
        data = resolve_spec_paths(model, data, Path(path).resolve().parent)
    sets = list(overrides)
    if sets:
        given = parse_overrides(sets)
        # dropping a value of the user's own file is said; one of the built-in default is not theirs
        data = deep_merge(_unset_bound(data, given, unset_with or {}, say=path is not None), given, model)
        source += " with --set " + " ".join(sets)
    return validate_spec(model, data, source=source)


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _unset_bound(data: Mapping[str, Any], given: Mapping[str, Any], unset_with: Mapping[str, Sequence[str]], *,
                 say: bool = True) -> Any:
    """`data` less the keys bound to a key that --set changes without them (load_spec)."""
    out = json.loads(json.dumps(data))  # a deep copy of plain YAML data
    for key, bound in unset_with.items():
        if _get(given, key) is None:
            continue
        for b in bound:
            if _get(given, b) is not None:
                continue  # given with --set too: the user's, for the new value
            *parents, leaf = b.split(".")
            node = _get(out, ".".join(parents)) if parents else out
            if isinstance(node, dict) and leaf in node:
                del node[leaf]
                if say:
                    log.info("%s is not carried over to the %s given with --set (it was set for another %s)",
                             b, key, key)
    return out


def canonical_sha256(data: Any) -> str:
    """sha256 of `data` as canonical JSON (sorted keys, no spaces): equal data, equal hash."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_hash(spec: BaseModel) -> str:
    """sha256 of a spec's (or any pydantic model's) canonical JSON: lineage for every output row."""
    return canonical_sha256(spec.model_dump(mode="json"))


def resolve_spec_paths(model: type[BaseModel], data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """`data` with the relative local paths of `model`'s path fields joined to `base`.

    Remote URIs (s3://...), absolute and ~ paths stay as they are; so does a relative
    name in a hub-id field when no such path exists under `base`. Keys the model does
    not know are left for validation to report.
    """
    out = dict(data)
    for name, info in model.model_fields.items():
        value = out.get(name)
        kind = (info.json_schema_extra or {}).get("spec_path") if isinstance(info.json_schema_extra, dict) else None
        if kind and isinstance(value, str):
            out[name] = _spec_relative(value, base, hub_ids=kind == "hub")
        elif isinstance(value, Mapping):
            nested = _model_in(info.annotation)
            if nested is not None:
                out[name] = resolve_spec_paths(nested, value, base)
    return out


def absolute_spec_paths(spec: T) -> T:
    """`spec` with the local paths of its path fields absolute (relative ones were the
    current folder's): workers run elsewhere, and a printed spec saved anywhere names
    the same files. Hub ids stay as they are; which keys were set is kept."""
    data = resolve_spec_paths(type(spec), spec.model_dump(mode="json", exclude_unset=True), Path.cwd())
    return type(spec).model_validate(data)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class in a field's annotation (`X`, `X | None`), if any."""
    import typing

    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _spec_relative(value: str, base: Path, *, hub_ids: bool) -> str:
    from combiner_core.storage import is_remote, looks_like_path, strip_file_scheme

    path = strip_file_scheme(value)
    if is_remote(value) or path.startswith(("/", "~")) or not path:
        return value
    joined = os.path.normpath(base / path)
    # "org/model" is a hub id unless it names something under the spec's folder (or a
    # folder there holds its parent: "models/my-captionr", a typo, is reported as a path).
    if hub_ids and not looks_like_path(value) and not Path(joined).exists():
        if "/" not in path or not Path(joined).parent.is_dir():
            return value
    return joined


def spec_yaml(spec: BaseModel, *, header: str = "") -> str:
    """`spec` as commented YAML a user can start from: every key, above it its description
    and default (from the pydantic fields). Keys the spec set are written; keys left at
    their default are written commented out (`# key: default`), so the file loads back
    as the same spec, and a limit fitted to a model later still applies to a default."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _yaml_fields(spec, lines, indent="", commented=False)
    return "\n".join(lines) + "\n"


_WIDTH = 96  # comment lines wrap here


def _yaml_fields(spec: BaseModel | None, lines: list[str], *, indent: str, commented: bool,
                 model: type[BaseModel] | None = None) -> None:
    """The fields of `spec` (or, with spec None, of `model` at their defaults)."""
    import textwrap

    model = type(spec) if spec is not None else model
    assert model is not None
    given = spec.model_fields_set if spec is not None else set()
    for name, info in model.model_fields.items():
        value = getattr(spec, name) if spec is not None else (
            None if info.is_required() else info.get_default(call_default_factory=True))
        off = commented or name not in given
        lead = indent + ("# " if off else "")
        about = info.description or ""
        if info.is_required():
            about += " (required)"
        else:
            default = _jsonable(info.get_default(call_default_factory=True))
            shown = json.dumps(default)
            if len(shown) <= 40 and not isinstance(default, dict):
                about += f" (default:\0{shown})"  # \0: kept on one line by the wrap below
        for line in textwrap.wrap(about, width=max(40, _WIDTH - len(indent) - 2)):
            lines.append(f"{indent}# {line.replace(chr(0), ' ')}")
        nested = _model_in(info.annotation)
        if nested is not None and isinstance(value, BaseModel):
            lines.append(f"{lead}{name}:")
            _yaml_fields(value, lines, indent=indent + "  ", commented=off)
        elif nested is not None and value is None:
            lines.append(f"{lead}{name}: null   # or a mapping with these keys:")
            _yaml_fields(None, lines, indent=indent + "  ", commented=True, model=nested)
        else:
            lines.extend(_yaml_value(name, _jsonable(value), lead))


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))  # tuples, enums: as YAML shows them


def _yaml_value(name: str, value: Any, lead: str) -> list[str]:
    inline = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    inline = inline.removesuffix("\n...").removesuffix("...").strip()
    if not isinstance(value, (list, dict)) or len(inline) <= 72:
        return [f"{lead}{name}: {inline}"]
    block = yaml.safe_dump(value, default_flow_style=False, width=10_000, sort_keys=False).rstrip().splitlines()
    return [f"{lead}{name}:"] + [f"{lead}  {line}" for line in block]
