"""Reading a spec: YAML files and their `extends` chain, `--set` overrides, and validation errors that
name the file, the dotted path and what is allowed."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .spec_model import Spec, SpecError


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; `over` wins; lists and scalars are replaced, not merged."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, referenced_from: str | None = None) -> dict:
    if not path.is_file():
        where = f"{referenced_from}: extends: " if referenced_from else ""
        raise SpecError(f"{where}spec file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping of spec sections, got {type(data).__name__}")
    return data


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a spec YAML and its `extends` chain into one merged dict (not yet validated)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise SpecError(f"{path}: extends forms a cycle: {chain}")
    data = _read_yaml(path, str(_seen[-1]) if _seen else None)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SpecError(f"{path}: extends: must be a file path string, got {parent!r}")
    base = load_raw(path.parent / parent, (*_seen, path))
    return deep_merge(base, data)


def parse_set(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], parsed value); the value is read as YAML (1e-4, [1,2], true)."""
    if "=" not in item:
        raise SpecError(f"--set {item}: expected a.b.c=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise SpecError(f"--set {item}: bad dotted key '{key}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads '1e-4' as a string; pydantic coerces numeric strings for float fields.
    return key.split("."), value


def apply_sets(raw: dict, sets: list[str]) -> dict:
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in sets:
        path, value = parse_set(item)
        node = out
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {item}: '{p}' is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _allowed_values(loc: tuple) -> list[str] | None:
    """Walk the Spec model along an error location to find the Literal choices, if any."""
    model: Any = Spec
    ann: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            ann = model.model_fields[part].annotation
            model = _unwrap(ann)
        else:
            return None
    lit = _unwrap(ann, want_literal=True)
    if lit is not None:
        return [str(a) for a in get_args(lit)]
    return None


def _unwrap(ann: Any, want_literal: bool = False) -> Any:
    """Strip Optional/tuple wrappers to reach a nested BaseModel (or a Literal when asked)."""
    seen = 0
    while ann is not None and seen < 5:
        seen += 1
        if get_origin(ann) is Literal:
            return ann if want_literal else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return None if want_literal else ann
        args = [a for a in get_args(ann) if a is not type(None) and a is not Ellipsis]
        if not args:
            return None
        ann = args[0]
    return None


def format_validation_error(err: ValidationError, source: str, sets: list[str] | None = None) -> str:
    """One line per error: where (the `--set` item that caused it when one did, else `source`), the dotted
    path, and what is allowed (with a "did you mean" for a misspelt key)."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        item = _set_item_for(loc, sets or [])
        if e["type"] == "literal_error":
            allowed = _allowed_values(loc) or []
            msg = f"{e['input']!r} is not one of {', '.join(allowed)}"
        elif e["type"] == "extra_forbidden":
            parent = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), parent, n=1)
            prefix = ".".join(str(p) for p in loc[:-1])
            msg = "unknown key" + (f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else "") + \
                (f" (allowed keys here: {', '.join(parent)})" if parent else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and e["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {e['input']!r})"
        if item is not None:
            lines.append(f"--set {item}: {dotted}: {msg} (spec {source.split(' (with --set')[0]})")
        else:
            lines.append(f"{source}: {dotted}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _set_item_for(loc: tuple, sets: list[str]) -> str | None:
    """The last `--set` item whose key is the error's location (or under it), if any."""
    dotted = [str(p) for p in loc if not isinstance(p, int)]
    for item in reversed(sets):
        key = item.split("=", 1)[0].strip().split(".")
        if dotted and key[:len(dotted)] == dotted:
            return item
    return None


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Spec
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        if part not in model.model_fields:
            return []
        model = _unwrap(model.model_fields[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def resolve_spec(path: str | Path, sets: list[str] | None = None,
                 extra: dict | None = None) -> Spec:
    """Load `path` (following `extends`), merge `extra` (e.g. a profile) and `--set` items, validate.

    The spec name defaults to the file stem.
    """
    path = Path(path)
    raw = load_raw(path)
    raw.setdefault("name", path.stem)
    if extra:
        raw = deep_merge(raw, extra)
    source = str(path)
    if sets:
        raw = apply_sets(raw, sets)
        source = f"{path} (with --set {' '.join(sets)})"
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source, sets)) from None


def spec_from_dict(raw: dict, source: str = "<dict>") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def with_overrides(spec: Spec, sets: list[str]) -> Spec:
    """A copy of `spec` with dotted overrides applied and re-validated."""
    raw = apply_sets(spec.model_dump(mode="json"), sets)
    return spec_from_dict(raw, f"{spec.name} (with --set {' '.join(sets)})")
