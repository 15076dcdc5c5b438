"""The cost model's arithmetic. Everything is SI inside (seconds, bytes, tokens); money is US dollars.

Conventions (documented in README, tested in closed form):

* A step of ``gpus`` GPUs for ``step_time_s`` seconds uses ``gpus * step_time_s / 3600`` GPU-hours, charged at
  ``gpu_hour_usd + upgrade_usd_per_gpu_hour`` dollars each (the recurring part of a network upgrade is a
  surcharge per GPU-hour).
* Inter-node traffic is the bytes that leave a node for the network (each inter-node byte counted once),
  charged at ``internode_usd_per_gb`` per GB (1e9 bytes).
* ``usd_per_step`` = GPU-hour cost + traffic cost of one step. The one-off ``upgrade_usd`` is charged to
  the training run of ``train_tokens`` tokens (so it appears in ``train_usd`` and, amortised, in
  ``usd_per_1b_tokens``); for inference it is amortised over ``serve_tokens`` tokens when given and
  left out otherwise.
* Training: ``train_steps = ceil(train_tokens / tokens_per_step)``, ``train_time_s = train_steps *
  step_time_s``.
* Inference: the prefill step's time is the time to first token, a decode step's time is the per-token
  latency; a response of ``gen_len`` tokens takes ``ttft + (gen_len - 1) * per_token_latency`` (the
  prefill yields the first token).
* Dollar outputs are ``None`` when no GPU-hour price is given.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

from moesim.errors import ConfigError

GB = 1e9

COST_FIELDS: dict[str, str] = {
    "gpu_hour_usd": "price of one GPU-hour in US dollars",
    "upgrade_usd": "one-off network-upgrade cost (charged to the training run; amortised over serve_tokens for inference)",
    "upgrade_usd_per_gpu_hour": "recurring network-upgrade cost per GPU-hour",
    "internode_usd_per_gb": "price per GB (1e9 bytes) of inter-node (or cross-zone) traffic",
    "train_tokens": "tokens of one training run (default 100B)",
    "serve_tokens": "tokens served over the upgrade's life, to amortise upgrade_usd for inference (optional)",
}

_COUNT_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([kKMBGT]?)\s*$")
_COUNT_SCALE = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(value: object) -> float:
    """A count (tokens, dollars) from a number or a string such as ``"100B"``, ``"1.5T"``, ``"2e6"``,
    ``"250k"`` (B and G both mean 1e9)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        m = _COUNT_RE.match(value.replace(",", "").replace("_", ""))
        if not m:
            raise ValueError(f"cannot parse {value!r} as a number (e.g. 100e9, '100B', '2.5M')")
        x = float(m.group(1)) * _COUNT_SCALE[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not finite")
    return x


@dataclass(frozen=True)
class CostInputs:
    """Prices and amounts. See the module docstring for how each enters."""

    gpu_hour_usd: Optional[float] = None
    upgrade_usd: float = 0.0
    upgrade_usd_per_gpu_hour: float = 0.0
    internode_usd_per_gb: float = 0.0
    train_tokens: float = 100e9
    serve_tokens: Optional[float] = None

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in ("gpu_hour_usd", "serve_tokens"):
                continue
            try:
                x = parse_count(v)
            except ValueError as exc:
                raise ConfigError(f"cost.{f.name}", str(exc)) from None
            if x < 0 or (f.name in ("train_tokens", "serve_tokens") and x == 0):
                raise ConfigError(f"cost.{f.name}", f"must be {'positive' if 'tokens' in f.name else 'non-negative'}, got {v!r}")
            object.__setattr__(self, f.name, x)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "cost") -> "CostInputs":
        """Validate a mapping (from YAML or a sweep row); unknown keys raise ConfigError naming the key."""
        data = dict(data or {})
        for key in data:
            if key not in COST_FIELDS:
                raise ConfigError(f"{where}.{key}", f"unknown cost input (known: {', '.join(COST_FIELDS)})")
        return cls(**data)

    @property
    def usd_per_gpu_hour(self) -> Optional[float]:
        """GPU-hour price including the recurring upgrade surcharge (None without a GPU-hour price)."""
        return None if self.gpu_hour_usd is None else self.gpu_hour_usd + self.upgrade_usd_per_gpu_hour

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepMeasure:
    """What the cost model needs from one simulated step (``SimResult`` via :meth:`from_result`)."""

    mode: str
    step_time_s: float
    tokens_per_step: float
    gpus: int
    bytes_by_link_class: Mapping[str, float] = field(default_factory=dict)
    internode_bytes: float = 0.0
    batch_size: Optional[int] = None
    gen_len: Optional[int] = None

    @classmethod
    def from_result(cls, res) -> "StepMeasure":
        cfg = res.cfg
        return cls(mode=cfg.run.mode, step_time_s=res.step_time_s, tokens_per_step=cfg.step_tokens,
                   gpus=cfg.world_size, bytes_by_link_class=res.bytes_by_link_class(),
                   internode_bytes=internode_bytes(res), batch_size=cfg.run.batch_size, gen_len=cfg.run.gen_len)


def internode_bytes(res) -> float:
    """Bytes of one step that left a node for the network: traffic on links of class ``nic`` going
    into a switch (every inter-node byte crosses exactly one such link on its way out)."""
    df = res.link_bytes
    if not len(df):
        return 0.0
    kind = res.topology.graph.nodes
    mask = (df["link_class"] == "nic") & df["dst"].map(lambda n: kind[n].get("kind") == "switch")
    return float(df.loc[mask, "bytes"].sum())


def _mul(a: Optional[float], b: float) -> Optional[float]:
    return None if a is None else a * b


def step_costs(step: StepMeasure, inputs: CostInputs = CostInputs()) -> dict[str, Any]:
    """Time, traffic and dollars derived from one step (flat dict; keys documented in README)."""
    t, n_tok = float(step.step_time_s), float(step.tokens_per_step)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"step time must be positive and finite, got {t!r}")
    gpu_hours = step.gpus * t / 3600.0
    price = inputs.usd_per_gpu_hour
    compute_usd = _mul(price, gpu_hours)
    traffic_usd = step.internode_bytes / GB * inputs.internode_usd_per_gb
    usd_step = None if compute_usd is None else compute_usd + traffic_usd
    out: dict[str, Any] = {
        "gpu_hours_per_step": gpu_hours,
        "usd_per_gpu_hour": price,
        "internode_bytes_per_step": float(step.internode_bytes),
        "compute_usd_per_step": compute_usd,
        "traffic_usd_per_step": traffic_usd if price is not None else None,
        "usd_per_step": usd_step,
        "tokens_per_s": n_tok / t,
    }
    if step.mode == "train":
        steps = math.ceil(inputs.train_tokens / n_tok)
        train_usd = None if usd_step is None else steps * usd_step + inputs.upgrade_usd
        out.update({
            "train_tokens": inputs.train_tokens,
            "train_steps": steps,
            "train_time_s": steps * t,
            "train_gpu_hours": steps * gpu_hours,
            "train_usd": train_usd,
            "usd_per_1b_tokens": None if train_usd is None else train_usd / inputs.train_tokens * 1e9,
            "train_internode_bytes": steps * float(step.internode_bytes),
        })
        for cls_, b in sorted(step.bytes_by_link_class.items()):
            out[f"train_bytes.{cls_}"] = steps * float(b)
    else:
        amort = inputs.upgrade_usd / inputs.serve_tokens if inputs.serve_tokens else 0.0
        per_token = None if usd_step is None else usd_step / n_tok + amort
        out["usd_per_1b_tokens"] = _mul(per_token, 1e9)
        if step.mode == "prefill":
            out.update({"ttft_s": t, "prefill_tokens_per_s": n_tok / t})
        else:
            out.update({"per_token_latency_s": t, "decode_tokens_per_s": n_tok / t,
                        "usd_per_million_generated_tokens": _mul(per_token, 1e6)})
    return out


def serving_costs(prefill: StepMeasure, decode: StepMeasure, inputs: CostInputs = CostInputs(),
                  gen_len: Optional[int] = None) -> dict[str, Any]:
    """A whole response: time to first token (the prefill step), per-token latency (a decode step),
    response time for ``gen_len`` tokens, generation throughput, and dollars per million generated
    tokens including the prefill's share."""
    if prefill.mode != "prefill" or decode.mode != "decode":
        raise ValueError("serving_costs takes a prefill step and a decode step")
    g = int(gen_len or decode.gen_len or prefill.gen_len or 1)
    if g < 1:
        raise ValueError(f"gen_len must be >= 1, got {g}")
    batch = float(decode.tokens_per_step)  # one token per sequence per decode step
    ttft, tpot = float(prefill.step_time_s), float(decode.step_time_s)
    response = ttft + (g - 1) * tpot
    p, d = step_costs(prefill, inputs), step_costs(decode, inputs)
    amort = inputs.upgrade_usd / inputs.serve_tokens if inputs.serve_tokens else 0.0
    usd_batch = None if p["usd_per_step"] is None else p["usd_per_step"] + (g - 1) * d["usd_per_step"]
    return {
        "gen_len": g,
        "batch_size": int(batch),
        "ttft_s": ttft,
        "per_token_latency_s": tpot,
        "response_time_s": response,
        "generated_tokens_per_s": batch * g / response,
        "usd_per_million_generated_tokens": None if usd_batch is None else (usd_batch / (batch * g) + amort) * 1e6,
    }


def compare(cdac: Mapping[str, Any], dcca: Mapping[str, Any]) -> dict[str, Optional[float]]:
    """DCCA / CDAC ratio for every numeric key the two share (None where undefined)."""
    out = {}
    for k, a in cdac.items():
        b = dcca.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            out[k] = b / a if a else None
    return out
