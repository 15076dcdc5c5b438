"""The one run-configuration schema shared by the simulator and the real backend.

Four public sections: ``model``, ``moe``, ``parallel``, ``run``. Sizes are element counts,
batch sizes are tokens or sequences as named. Cross-field rules live in ``Config._check``
so that every error names the dotted field at fault.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

_STRICT = ConfigDict(extra="forbid", strict=True, validate_assignment=False, frozen=True)

PosInt = Field(gt=0)


class _Section(BaseModel):
    model_config = _STRICT


class _Invalid(ValueError):
    """Raised by cross-field checks; carries the dotted field name."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


class ModelSpec(_Section):
    """Transformer backbone. ``seq_len`` is the (maximum) sequence length in tokens."""

    name: str = "custom"
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    vocab: int = Field(gt=0)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    ffn_hidden: Optional[int] = Field(default=None, gt=0, description="dense FFN inner size; default 4*hidden")

    @property
    def dtype_bytes(self) -> int:
        """Bytes per activation/parameter element."""
        return DTYPE_BYTES[self.dtype]

    @property
    def dense_ffn(self) -> int:
        return self.ffn_hidden or 4 * self.hidden


class MoESpec(_Section):
    """MoE layer. ``structure``: dense (plain FFN), cdac (fine-grained, All-to-All at h) or
    dcca (BigMac: descend h->d before dispatch, All-to-All at d, ascend d->h after combine)."""

    structure: Literal["dense", "cdac", "dcca"] = "cdac"
    experts: int = Field(default=64, gt=0)
    top_k: int = Field(default=4, gt=0)
    ratio: float = Field(default=0.25, gt=0, description="BigMac r")
    capacity_factor: Optional[float] = Field(default=None, gt=0, description="null = dropless")
    shared_experts: int = Field(default=0, ge=0)
    expert_hidden: Optional[int] = Field(default=None, gt=0, description="CDAC expert inner size f; default r*h")
    low_dim: Optional[int] = Field(default=None, gt=0, description="DCCA low dimension d; default r*h")
    dcca_expert_hidden: Optional[int] = Field(default=None, gt=0, description="DCCA expert inner size f'; default h")
    routing: Literal["uniform", "zipf", "file"] = "uniform"
    zipf_exponent: float = Field(default=1.0, ge=0, description="skew of expert popularity when routing=zipf")
    routing_file: Optional[str] = Field(default=None, description="CSV/NPY of per-expert token shares when routing=file")


class ParallelSpec(_Section):
    """Megatron convention: GPUs = dp * tp * pp; ep divides dp; dp defaults to ep."""

    dp: Optional[int] = Field(default=None, gt=0)
    tp: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)

    @property
    def dp_size(self) -> int:
        return self.dp if self.dp is not None else self.ep

    @property
    def world_size(self) -> int:
        return self.dp_size * self.tp * self.pp


class RunSpec(_Section):
    """What one step is. train: one iteration over ``global_batch_tokens`` tokens (fwd+bwd+optimizer).
    prefill: one forward over ``batch_size`` prompts of ``prompt_len`` tokens. decode: one generated
    token for each of ``batch_size`` sequences, at the mean context of a ``gen_len``-token generation."""

    mode: Literal["train", "prefill", "decode"] = "train"
    global_batch_tokens: int = Field(default=131072, gt=0)
    micro_batch_tokens: Optional[int] = Field(default=None, gt=0, description="tokens per dp rank per micro-batch")
    batch_size: int = Field(default=64, gt=0, description="sequences per inference batch (global)")
    prompt_len: int = Field(default=128, gt=0)
    gen_len: int = Field(default=8, gt=0)
    seed: int = 0


class Config(_Section):
    """A whole run: model, MoE layer, parallel layout, and what one step is."""

    model: ModelSpec
    moe: MoESpec = MoESpec()
    parallel: ParallelSpec = ParallelSpec()
    run: RunSpec = RunSpec()

    # ---- derived sizes (elements) -------------------------------------------------------------
    @property
    def low_dim(self) -> int:
        """DCCA's communication dimension d (elements); r*h unless given."""
        return self.moe.low_dim or round(self.moe.ratio * self.model.hidden)

    @property
    def expert_io_dim(self) -> int:
        """Dimension experts read and write: h for CDAC, d for DCCA."""
        return self.low_dim if self.moe.structure == "dcca" else self.model.hidden

    @property
    def expert_inner_dim(self) -> int:
        """Expert inner size: f = r*h for CDAC, f' = h for DCCA, unless given."""
        if self.moe.structure == "dcca":
            return self.moe.dcca_expert_hidden or self.model.hidden
        return self.moe.expert_hidden or round(self.moe.ratio * self.model.hidden)

    @property
    def a2a_dim(self) -> int:
        """Elements per token copy sent in dispatch/combine (0 for dense)."""
        return 0 if self.moe.structure == "dense" else self.expert_io_dim

    @property
    def is_moe(self) -> bool:
        return self.moe.structure != "dense"

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    @property
    def step_tokens(self) -> int:
        """Tokens processed by one step across all data-parallel ranks."""
        if self.run.mode == "train":
            return self.run.global_batch_tokens
        if self.run.mode == "prefill":
            return self.run.batch_size * self.run.prompt_len
        return self.run.batch_size

    @property
    def tokens_per_dp_rank(self) -> int:
        return self.step_tokens // self.parallel.dp_size

    def to_dict(self) -> dict:
        """Plain dict (YAML/JSON-able) with every field, defaults included."""
        return self.model_dump(mode="json")

    # ---- cross-field rules ---------------------------------------------------------------------
    @model_validator(mode="after")
    def _check(self) -> "Config":
        m, moe, p, run = self.model, self.moe, self.parallel, self.run
        h = m.hidden
        if h % m.heads:
            raise _Invalid("model.hidden", f"hidden ({h}) is not divisible by heads ({m.heads})")
        if h % p.tp:
            raise _Invalid("parallel.tp", f"hidden ({h}) is not divisible by tp ({p.tp})")
        if m.heads % p.tp:
            raise _Invalid("parallel.tp", f"heads ({m.heads}) is not divisible by tp ({p.tp})")
        if p.pp != 1:
            raise _Invalid("parallel.pp", "pipeline parallelism is not modelled yet; pp must be 1")
        dp = p.dp_size
        if dp % p.ep:
            raise _Invalid("parallel.ep", f"ep ({p.ep}) does not divide dp ({dp})")
        if m.layers % p.pp:
            raise _Invalid("parallel.pp", f"layers ({m.layers}) is not divisible by pp ({p.pp})")
        if moe.structure == "dense":
            if p.ep != 1:
                raise _Invalid("parallel.ep", "expert parallelism needs an MoE structure (cdac or dcca), not dense")
        else:
            if moe.top_k > moe.experts:
                raise _Invalid("moe.top_k", f"top_k ({moe.top_k}) exceeds the number of experts ({moe.experts})")
            if moe.experts % p.ep:
                raise _Invalid("moe.experts", f"experts ({moe.experts}) is not divisible by ep ({p.ep})")
            rh = moe.ratio * h
            needs_rh = (moe.structure == "cdac" and moe.expert_hidden is None) or (
                moe.structure == "dcca" and moe.low_dim is None)
            if needs_rh and (abs(rh - round(rh)) > 1e-9 or round(rh) < 1):
                raise _Invalid("moe.ratio", f"ratio*hidden = {moe.ratio}*{h} = {rh:g} is not a whole positive number")
            if moe.routing == "file" and not moe.routing_file:
                raise _Invalid("moe.routing_file", "routing is 'file' but no routing_file is given")
            if not math.isfinite(moe.ratio):
                raise _Invalid("moe.ratio", "ratio must be finite")
        if moe.capacity_factor is not None and not math.isfinite(moe.capacity_factor):
            raise _Invalid("moe.capacity_factor", "capacity_factor must be finite or null")
        if run.mode == "train":
            if run.global_batch_tokens % dp:
                raise _Invalid("run.global_batch_tokens",
                               f"global_batch_tokens ({run.global_batch_tokens}) is not divisible by dp ({dp})")
            per_rank = run.global_batch_tokens // dp
            if run.micro_batch_tokens is not None and per_rank % run.micro_batch_tokens:
                raise _Invalid("run.micro_batch_tokens",
                               f"micro_batch_tokens ({run.micro_batch_tokens}) does not divide the tokens per dp rank ({per_rank})")
        else:
            if run.batch_size % dp:
                raise _Invalid("run.batch_size", f"batch_size ({run.batch_size}) is not divisible by dp ({dp})")
            if run.prompt_len + run.gen_len > m.seq_len:
                raise _Invalid("run.prompt_len",
                               f"prompt_len + gen_len ({run.prompt_len}+{run.gen_len}) exceeds the model's seq_len ({m.seq_len})")
        return self
