"""Load a Config from a preset name or YAML file, apply ``--set a.b=value`` overrides, validate.

All failures raise :class:`moesim.errors.ConfigError` naming the dotted field (or the file)."""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from moesim.config.schema import Config, _Invalid
from moesim.errors import ConfigError

SECTIONS = ("model", "moe", "parallel", "run")


def preset_names() -> list[str]:
    """Names of the built-in presets (``gpt3-medium`` ...)."""
    files = resources.files("moesim.presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


PRESETS = tuple(preset_names())


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{source}: the top level must be a mapping with sections {', '.join(SECTIONS)}")
    return data


def _preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError("model", f"unknown preset '{name}' (known: {', '.join(PRESETS)}; or give a YAML file path)")
    text = resources.files("moesim.presets").joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def _base_dict(model: str | Path | Mapping | None) -> dict:
    if model is None:
        return _preset_dict("gpt3-xl")
    if isinstance(model, Mapping):
        return copy.deepcopy(dict(model))
    text = str(model)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError("model", f"config file '{path}' does not exist")
        data = _read_yaml(path.read_text(), str(path))
        base = data.pop("preset", None)
        if base is not None:  # a file may start from a preset and override parts of it
            merged = _preset_dict(str(base))
            _deep_update(merged, data)
            return merged
        return data
    return _preset_dict(text)


def _deep_update(dst: dict, src: Mapping) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _parse_value(text: str) -> Any:
    """A YAML scalar; numbers YAML 1.1 leaves as strings (``1e-05``) become floats."""
    try:
        value = yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) to a config dict."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("", f"override '{item}' is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(key, "overrides take the form section.key=value with a section in "
                                   f"{', '.join(SECTIONS)}")
        section, field = parts
        if section not in SECTIONS:
            raise ConfigError(key, f"unknown section '{section}' (expected one of {', '.join(SECTIONS)})")
        node = out.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(section, "must be a mapping")
        node[field] = _parse_value(value)
    return out


def _explain(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        return ConfigError(cause.field, cause.reason)
    field = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return ConfigError(field, "unknown key")
    if kind == "missing":
        return ConfigError(field, "is required")
    given = err.get("input")
    return ConfigError(field, f"{err['msg'].lower()} (got {given!r})")


def validate_config(data: Mapping) -> Config:
    """Validate a plain dict into a Config, raising ConfigError with the dotted field on failure."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise _explain(exc) from None


def load_config(model: str | Path | Mapping | None = None, overrides: Iterable[str] = ()) -> Config:
    """Config from a preset name, YAML path or dict (default preset ``gpt3-xl``), with overrides."""
    data = apply_overrides(_base_dict(model), overrides)
    return validate_config(data)
