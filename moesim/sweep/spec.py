"""Sweep files: parse, validate and expand into scenarios.

A sweep is a YAML mapping::

    name: nic-upgrade                 # optional
    base:                             # what every scenario starts from
      model: gpt3-xl                  # preset name or config file (relative to the sweep file)
      set: {run.global_batch_tokens: 131072}   # config overrides (mapping or list of "key=value")
      topology: {kind: bigmac-paper}  # generator parameters, or {file: cluster.json}
      profile: paper-gpu-48gb         # device profile for every GPU (default: the topology's)
      a2a_algorithm: direct           # direct | 2d
      cost: {gpu_hour_usd: 2.0, train_tokens: 100B}
    grid:                             # cartesian product over these keys
      moe.structure: [cdac, dcca]
      topology.nic_bandwidth: ["100 Gbit/s", "400 Gbit/s"]
    list:                             # explicit scenarios (each combined with every grid point)
      - {model: gpt3-medium, moe.top_k: 4}
      - {model: gpt3-xl, moe.top_k: 8, label: big}

Keys in ``grid`` and ``list`` are flat: ``model``, ``profile``, ``a2a_algorithm``, ``label``, config
fields ``section.field`` (sections model, moe, parallel, run), topology parameters
``topology.NAME`` and cost inputs ``cost.NAME``. A scenario is base, then the list entry, then the
grid point; a key may not appear in both a list entry and the grid.

A scenario's id is a stable hash of its canonical inputs (bandwidths in bytes/s, counts as numbers)
and of the contents of the files it names, so a resumed sweep recognises finished scenarios.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import ConfigDict, TypeAdapter, ValidationError

from moesim.config import loader as _loader
from moesim.config.schema import ModelSpec, MoESpec, ParallelSpec, RunSpec
from moesim.economics import COST_FIELDS, parse_count
from moesim.errors import ConfigError
from moesim.io import read_yaml_file
from moesim.units import parse_bandwidth

SECTION_MODELS = {"model": ModelSpec, "moe": MoESpec, "parallel": ParallelSpec, "run": RunSpec}
SPECIAL_KEYS = ("model", "profile", "a2a_algorithm", "label")
A2A_ALGORITHMS = ("direct", "2d")
TOP_LEVEL_KEYS = ("name", "description", "base", "grid", "list")
BASE_KEYS = ("model", "set", "topology", "profile", "a2a_algorithm", "cost", "label")

TOPOLOGY_KINDS = ("bigmac-paper", "cluster", "dgx-h100", "testbed")
DEFAULT_TOPOLOGY_KIND = "bigmac-paper"
# sweep-level names -> generator argument names, per kind (so `topology.nodes` works everywhere)
TOPOLOGY_ALIASES = {
    "bigmac-paper": {"nodes": "machines", "gpus_per_node": "gpus_per_machine"},
    "testbed": {"nodes": "hosts", "gpus_per_node": "ranks_per_host", "nic_bandwidth": "link_bandwidth"},
    "cluster": {},
    "dgx-h100": {},
}
_TOPO_CHOICES = {"intra": ("nvswitch", "pcie"), "fabric": ("rail", "leafspine")}
_TOPO_COUNTS = ("nodes", "gpus_per_node", "nics_per_node", "leaf_ports", "spines", "gpus_per_pcie_switch",
                "machines", "gpus_per_machine", "hosts", "ranks_per_host")
_TOPO_STRINGS = ("device", "name", "file", "kind")


def _generator_params(kind: str) -> list[str]:
    from moesim.topology.generators import GENERATORS
    return list(inspect.signature(GENERATORS[kind]).parameters)


def topology_param_names() -> list[str]:
    """Every ``topology.NAME`` a sweep accepts (over all kinds), plus ``kind`` and ``file``."""
    names = {"kind", "file"}
    for kind in TOPOLOGY_KINDS:
        names.update(_generator_params(kind))
        names.update(TOPOLOGY_ALIASES[kind])
    return sorted(names)


# ---- values ---------------------------------------------------------------------------------------------
def _config_field_check(key: str, value: Any) -> Any:
    section, name = key.split(".", 1)
    model = SECTION_MODELS[section]
    if name not in model.model_fields:
        raise ConfigError(key, f"unknown config field (fields of '{section}': {', '.join(model.model_fields)})")
    info = model.model_fields[name]
    try:
        adapter = TypeAdapter(Annotated[info.annotation, *info.metadata], config=ConfigDict(strict=True))
        adapter.validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(key, f"{err['msg'].lower()} (got {value!r})") from None
    except TypeError:  # an annotation TypeAdapter cannot take: leave it to the config validation
        pass
    return value


def normalize(key: str, value: Any) -> Any:
    """Validate one flat sweep key and return its canonical value (raises ConfigError naming the key)."""
    if not isinstance(key, str) or not key:
        raise ConfigError(str(key), "sweep keys must be non-empty strings")
    if key in ("model", "label"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"must be a non-empty string, got {value!r}")
        return value.strip()
    if key == "profile":
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"must be a profile name or file, got {value!r}")
        return value.strip()
    if key == "a2a_algorithm":
        if value not in A2A_ALGORITHMS:
            raise ConfigError(key, f"must be one of {', '.join(A2A_ALGORITHMS)}, got {value!r}")
        return value
    head, _, rest = key.partition(".")
    if not rest:
        raise ConfigError(key, "unknown sweep key (expected model, profile, a2a_algorithm, label, "
                               "section.field for sections model/moe/parallel/run, topology.NAME or cost.NAME)")
    if head in SECTION_MODELS:
        if "." in rest:
            raise ConfigError(key, "config keys take the form section.field")
        return _config_field_check(key, value)
    if head == "cost":
        if rest not in COST_FIELDS:
            raise ConfigError(key, f"unknown cost input (known: {', '.join(COST_FIELDS)})")
        if value is None and rest in ("gpu_hour_usd", "serve_tokens"):
            return None
        try:
            x = parse_count(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        if x < 0:
            raise ConfigError(key, f"must be non-negative, got {value!r}")
        return x
    if head == "topology":
        return _normalize_topology(key, rest, value)
    raise ConfigError(key, f"unknown key prefix '{head}' (expected model, moe, parallel, run, topology or cost)")


def _normalize_topology(key: str, name: str, value: Any) -> Any:
    known = topology_param_names()
    if name not in known:
        raise ConfigError(key, f"unknown topology parameter (known: {', '.join(known)})")
    if name == "kind":
        if value not in TOPOLOGY_KINDS:
            raise ConfigError(key, f"must be one of {', '.join(TOPOLOGY_KINDS)}, got {value!r}")
        return value
    if name in _TOPO_CHOICES:
        if value not in _TOPO_CHOICES[name]:
            raise ConfigError(key, f"must be one of {', '.join(_TOPO_CHOICES[name])}, got {value!r}")
        return value
    if name in _TOPO_STRINGS:
        if value is None and name in ("device", "name"):
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"must be a non-empty string, got {value!r}")
        return value.strip()
    if name.endswith("_bandwidth"):
        try:
            x = parse_bandwidth(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        if x <= 0:
            raise ConfigError(key, f"must be positive, got {value!r}")
        return x
    if name in _TOPO_COUNTS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
        return value
    # any other numeric parameter (oversubscription, ...)
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise ConfigError(key, f"must be a positive number, got {value!r}")
    return x


# ---- scenarios ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """One point of a sweep. ``inputs``: canonical flat keys (what the id hashes and rows record);
    ``resolved``: the same with file paths made absolute (what a worker runs)."""

    id: str
    index: int
    inputs: Mapping[str, Any]
    resolved: Mapping[str, Any] = field(default_factory=dict)

    def topology_params(self) -> dict:
        return {k[len("topology."):]: v for k, v in self.resolved.items() if k.startswith("topology.")}

    def config_overrides(self) -> dict:
        return {k: v for k, v in self.resolved.items() if k.split(".", 1)[0] in SECTION_MODELS and "." in k}

    def cost_inputs(self) -> dict:
        return {k[len("cost."):]: v for k, v in self.resolved.items() if k.startswith("cost.")}


@dataclass
class SweepSpec:
    name: str
    scenarios: list[Scenario]
    source: str = "<dict>"
    duplicates: int = 0
    description: str = ""


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def _looks_like_file(text: str, base_dir: Path) -> Path | None:
    p = Path(text)
    full = p if p.is_absolute() else (base_dir / p)
    if p.suffix in (".yaml", ".yml", ".json", ".graphml", ".xml") or full.is_file():
        return full.resolve()
    return None


def scenario_id(inputs: Mapping[str, Any], digests: Mapping[str, str] | None = None) -> str:
    blob = json.dumps({"inputs": dict(inputs), "files": dict(digests or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten_base(base: Any) -> dict:
    if base is None:
        return {}
    if not isinstance(base, Mapping):
        raise ConfigError("base", "must be a mapping (model, set, topology, profile, a2a_algorithm, cost, label)")
    flat: dict[str, Any] = {}
    for key, value in base.items():
        if key not in BASE_KEYS:
            if isinstance(key, str) and "." in key:  # a flat key in base is fine too
                flat[key] = value
                continue
            raise ConfigError(f"base.{key}", f"unknown key (expected one of {', '.join(BASE_KEYS)})")
        if key == "set":
            overrides: dict[str, Any] = {}
            if isinstance(value, Mapping):
                for k, v in value.items():
                    if isinstance(v, Mapping) and k in SECTION_MODELS:  # nested {moe: {top_k: 4}}
                        for kk, vv in v.items():
                            overrides[f"{k}.{kk}"] = vv
                    else:
                        overrides[str(k)] = v
            elif isinstance(value, list):
                for item in value:
                    if not isinstance(item, str) or "=" not in item:
                        raise ConfigError("base.set", f"list items take the form section.field=value, got {item!r}")
                    k, v = item.split("=", 1)
                    overrides[k.strip()] = _loader._parse_value(v)
            elif value is not None:
                raise ConfigError("base.set", "must be a mapping of section.field: value (or a list of 'key=value')")
            for k in overrides:
                if k.split(".", 1)[0] not in SECTION_MODELS:
                    raise ConfigError(f"base.set.{k}", "config overrides take section.field with a section in "
                                                       "model, moe, parallel, run")
            flat.update(overrides)
        elif key in ("topology", "cost"):
            if value is None:
                continue
            if isinstance(value, str) and key == "topology":
                value = {"kind": value} if value in TOPOLOGY_KINDS else {"file": value}
            if not isinstance(value, Mapping):
                raise ConfigError(f"base.{key}", "must be a mapping")
            for k, v in value.items():
                flat[f"{key}.{k}"] = v
        else:
            flat[key] = value
    return flat


def _check_topology_combo(params: Mapping[str, Any], where: str) -> None:
    if "file" in params:
        other = sorted(k for k in params if k != "file")
        if other:
            raise ConfigError(f"topology.{other[0]}", f"{where}: cannot be combined with topology.file")
        return
    kind = params.get("kind", DEFAULT_TOPOLOGY_KIND)
    allowed = set(_generator_params(kind)) | set(TOPOLOGY_ALIASES[kind]) | {"kind"}
    for k in sorted(params):
        if k not in allowed:
            hint = " (set topology.kind: cluster for intra/fabric/oversubscription)" if kind != "cluster" else ""
            raise ConfigError(f"topology.{k}", f"{where}: not a parameter of the '{kind}' topology; its parameters: "
                                               f"{', '.join(sorted(allowed))}{hint}")


class SweepSpecError(ConfigError):
    """An invalid sweep file; ``field`` is the sweep key at fault."""

    def __init__(self, field: str, reason: str, source: str = ""):
        self.field, self.reason, self.source = field, reason, source
        where = f"{source}: " if source and source != "<dict>" else ""
        Exception.__init__(self, f"{where}sweep key '{field}': {reason}" if field else f"{where}{reason}")


def parse_spec(data: Any, source: str = "<dict>", base_dir: str | Path | None = None) -> SweepSpec:
    """Validate a sweep mapping and expand it into scenarios (raises SweepSpecError naming the key)."""
    try:
        return _parse_spec(data, source, base_dir)
    except SweepSpecError:
        raise
    except ConfigError as exc:
        raise SweepSpecError(exc.field, exc.reason, source) from None


def _parse_spec(data: Any, source: str, base_dir: str | Path | None) -> SweepSpec:
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: a sweep must be a mapping with 'base' and 'grid' and/or 'list'")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(str(key), f"unknown top-level key (expected {', '.join(TOP_LEVEL_KEYS)})")
    base = {k: normalize(k, v) for k, v in _flatten_base(data.get("base")).items()}

    grid = data.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError("grid", "must be a mapping of key: [values]")
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", "must be a non-empty list of values")
        axes.append([(key, normalize(str(key), v)) for v in values])

    entries = data.get("list")
    if entries is None:
        entries = [{}]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("list", "must be a non-empty list of mappings")
    norm_entries = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"list[{i}]", "each entry must be a mapping of key: value")
        e = {}
        for k, v in entry.items():
            if k in grid:
                raise ConfigError(str(k), f"list[{i}] sets a key the grid also varies")
            try:
                e[str(k)] = normalize(str(k), v)
            except ConfigError as exc:
                raise ConfigError(exc.field, f"list[{i}]: {exc.reason}") from None
        norm_entries.append(e)
    if not axes and data.get("list") is None and not base:
        raise ConfigError("grid", f"{source}: the sweep has neither 'grid' nor 'list' nor 'base'")

    scenarios: list[Scenario] = []
    seen: set[str] = set()
    duplicates = 0
    for entry in norm_entries:
        for point in itertools.product(*axes) if axes else [()]:
            inputs = {**base, **entry, **dict(point)}
            topo = {k[len("topology."):]: v for k, v in inputs.items() if k.startswith("topology.")}
            _check_topology_combo(topo, f"scenario {len(scenarios) + duplicates}")
            resolved, digests = dict(inputs), {}
            for key in ("model", "topology.file", "profile"):
                val = inputs.get(key)
                if isinstance(val, str):
                    path = _looks_like_file(val, base_dir)
                    if path is not None or key == "topology.file":
                        path = path or (base_dir / val).resolve()
                        resolved[key] = str(path)
                        digests[key] = _file_digest(path)
            sid = scenario_id(inputs, digests)
            if sid in seen:
                duplicates += 1
                continue
            seen.add(sid)
            scenarios.append(Scenario(sid, len(scenarios), dict(sorted(inputs.items())), dict(sorted(resolved.items()))))
    name = data.get("name") or (Path(source).stem if source != "<dict>" else "sweep")
    return SweepSpec(str(name), scenarios, source, duplicates, str(data.get("description") or ""))


def load_sweep(path_or_data: str | Path | Mapping) -> SweepSpec:
    """A sweep from a YAML file path or an already-parsed mapping (paths relative to the file)."""
    if isinstance(path_or_data, Mapping):
        return parse_spec(copy.deepcopy(dict(path_or_data)))
    p = Path(path_or_data)
    return parse_spec(read_yaml_file(p, "a sweep file", missing="no such sweep file"), str(p), p.resolve().parent)
