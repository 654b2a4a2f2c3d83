"""Recipes: YAML → pydantic config, with dotted command-line overrides and errors that name the bad key.

A recipe is a YAML mapping validated by one pydantic model per runner. ``key.sub=value`` overrides are parsed
as YAML scalars (so ``trainer.lr=1e-4`` is a float and ``data.tasks=[a,b]`` a list). Unknown keys are errors that
name the key, where it is, and the closest valid key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from refinery.errors import ConfigError

T = TypeVar("T", bound=BaseModel)
_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a","b","c"], parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCI.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads '1e-4' as a string; users mean a number
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override applied (intermediate mappings are created)."""
    out = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file as a mapping, with one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory, expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"recipe {path}{where}: malformed YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def validate(model: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate ``data`` against ``model``; turn pydantic's error list into one actionable line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(model, e, source)) from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = _deepcopy(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deepcopy(v)
    return out


def apply_profile(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge the selected ``profiles.<name>`` section (chosen by ``profile=NAME``) into the recipe.

    A profile is a partial recipe (e.g. ``tiny``: CPU-sized model and steps); explicit overrides still win.
    """
    profiles = data.pop("profiles", None) or {}
    chosen = data.get("profile")
    for item in overrides:
        path, value = parse_override(item)
        if path == ["profile"]:
            chosen = value
    if chosen is None:
        return data
    if chosen not in profiles:
        raise ConfigError(f"unknown profile '{chosen}' (this recipe has: {', '.join(profiles) or 'none'})")
    return deep_merge(data, profiles[chosen])


def with_defaults(model: type[BaseModel], default: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` completed from ``default`` (an instance) wherever ``data`` gives a section only in part.

    Without this, ``policy.bootstrap.trainer.steps=800`` would rebuild ``bootstrap`` from its class defaults and
    silently drop the values its default factory set. Plain dict/list fields are replaced, not merged; unknown keys
    are kept so validation can name them.
    """
    out = dict(data)
    for name, field in model.model_fields.items():
        sub_default = getattr(default, name, None)
        ann = _unwrap(field.annotation)
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(sub_default, BaseModel)
        if name in data:
            if is_section and isinstance(data[name], dict):
                out[name] = with_defaults(ann, sub_default, data[name])
        else:
            out[name] = sub_default.model_dump() if isinstance(sub_default, BaseModel) else _deepcopy(sub_default)
    return out


def load_config(model: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load a recipe (or the model's defaults when ``recipe`` is None), apply its profile and overrides, validate."""
    data = read_yaml(recipe) if recipe is not None else {}
    data = apply_profile(data, list(overrides or []))
    data = apply_overrides(data, list(overrides or []))
    try:
        data = with_defaults(model, model(), data)
    except ValidationError:  # a runner whose config has required fields: validate the data as given
        pass
    return validate(model, data, source=str(recipe) if recipe is not None else "defaults")


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, in field order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the last key of ``path`` (None if it can't be found)."""
    current: Any = model
    for part in path[:-1]:
        if isinstance(part, int):  # an item of a list of sections (data.files.0.hub)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _format_errors(model: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            holder = _model_at(model, loc)
            valid = list(holder.model_fields) if holder else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            prefix = ".".join(str(p) for p in loc[:-1])
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            choices = f" (valid keys here: {', '.join(valid)})" if valid and not close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}{choices}")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) else ""
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "value_error":
                got_s = ""
            lines.append(f"{source}: {key}: {msg}{got_s}")
    return "; ".join(lines)
