"""Process groups for expert parallelism: the ep group (All-to-All), the dp group (gradient
all-reduce of non-expert parameters) and the expert-replica group (all-reduce of expert
parameters across ep replicas when dp > ep). gloo on CPU, NCCL when CUDA is available.

Layout (tp = pp = 1): ranks 0..W-1 all form the dp group; ep groups are contiguous blocks
``[g*ep, (g+1)*ep)`` (so on a testbed with ranks-per-host >= ep an ep group stays inside a host);
the expert-replica groups are ``{i, i+ep, i+2*ep, ...}``.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from moesim.config import Config
from moesim.errors import ConfigError


def default_backend() -> str:
    """NCCL when CUDA is usable, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def default_device(backend: str) -> torch.device:
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init_distributed(timeout_s: float = 300.0, backend: Optional[str] = None) -> tuple[str, torch.device]:
    """Initialise the default process group: from torchrun's environment when present, otherwise
    a world of one rank (a FileStore in a temporary directory, so gloo and NCCL both work)."""
    backend = backend or default_backend()
    device = default_device(backend)
    if dist.is_initialized():
        return dist.get_backend(), device
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    else:
        path = tempfile.mktemp(prefix="moesim-rb-store-")
        atexit.register(_unlink_quietly, path)
        store = dist.FileStore(path, 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout, **kwargs)
    return backend, device


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@dataclass
class Groups:
    """This rank's place in the parallel layout. ``None`` groups mean 'no process group' (a plain
    single-process run without torch.distributed: collectives become local copies)."""

    rank: int = 0
    world: int = 1
    ep_size: int = 1
    ep_rank: int = 0
    dp_size: int = 1
    ep_group: Any = None
    dp_group: Any = None
    expert_dp_group: Any = None
    expert_dp_size: int = 1
    backend: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False

    @property
    def local_expert_offset(self) -> int:
        return self.ep_rank


def single(device: torch.device | str = "cpu") -> Groups:
    """A layout with no process groups (reference runs, tests)."""
    return Groups(device=torch.device(device))


def check_layout(cfg: Config, world: int) -> None:
    """Refuse configs the real backend cannot run at this world size."""
    p = cfg.parallel
    if p.tp != 1:
        raise ConfigError("parallel.tp", "the real backend runs tp = 1 only (no tensor parallelism)")
    if p.pp != 1:
        raise ConfigError("parallel.pp", "the real backend runs pp = 1 only")
    if p.world_size != world:
        raise ConfigError("parallel.ep",
                          f"the config's world size dp*tp*pp = {p.world_size} (dp {p.dp_size}, ep {p.ep}) does not "
                          f"match the {world} launched process(es); e.g. --set parallel.ep={world} or "
                          f"--set parallel.dp={world}")


def build_groups(cfg: Config, backend: str, device: torch.device) -> Groups:
    """Create the ep / dp / expert-replica groups (collective: every rank must call it)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    check_layout(cfg, world)
    ep = cfg.parallel.ep
    dp = cfg.parallel.dp_size
    ep_group = None
    for g in range(world // ep):
        ranks = list(range(g * ep, (g + 1) * ep))
        grp = dist.group.WORLD if ep == world else dist.new_group(ranks)
        if rank in ranks:
            ep_group = grp
    replicas = world // ep
    expert_dp_group = None
    if replicas > 1:
        for i in range(ep):
            ranks = list(range(i, world, ep))
            grp = dist.new_group(ranks)
            if rank in ranks:
                expert_dp_group = grp
    return Groups(rank=rank, world=world, ep_size=ep, ep_rank=rank % ep, dp_size=dp, ep_group=ep_group,
                  dp_group=dist.group.WORLD, expert_dp_group=expert_dp_group, expert_dp_size=replicas,
                  backend=backend, device=device, distributed=True)


def finish_process_group(prog: str) -> None:
    """All ranks leave together (the results are already complete), then the group is destroyed;
    a teardown hiccup is a warning, not a failure."""
    import sys
    try:
        dist.barrier()
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - the work is done
        print(f"{prog}: warning: process group teardown: {type(exc).__name__}: {exc}", file=sys.stderr)


def exit_process(rc: Optional[int]) -> None:
    """End a rank process with exit status ``rc`` (None: 0) once its work is written, without the
    interpreter's teardown: destroying torch's and gloo's C++ threads at exit can abort a finished
    rank (``terminate called without an active exception``, SIGABRT), which the launcher then
    reports as a failed run. Flushes stdout and stderr first; every result file is already closed
    (written atomically). A process not started by a launcher (no ``RANK`` in its environment) exits
    normally, so its exit handlers (the single-process store's file) run."""
    import sys
    rc = 0 if rc is None else int(rc)
    if "RANK" not in os.environ:
        sys.exit(rc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def gather_rows_to_rank0(rows: list, progress, watchdog) -> Optional[list]:
    """Every rank's result rows, concatenated on rank 0 (None on the others); the watchdog stops
    once the gather has returned."""
    progress.touch("gather", "none")
    progress.stage = "gather"
    gathered: Optional[list] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    with progress.collective_call("gather_results"):
        dist.gather_object(rows, gathered, dst=0)
    watchdog.stop()
    return None if gathered is None else [r for part in gathered for r in part]


def torch_meta(kind: str, backend: str, device, **extra: Any) -> dict:
    """Table metadata: the common provenance plus torch version, backend, world size, device, threads."""
    from real_backend.results import base_meta
    meta = base_meta(kind)
    meta.update({"torch_version": torch.__version__, "backend": backend, "world_size": dist.get_world_size(),
                 "device": str(device), "threads": torch.get_num_threads()}, **extra)
    meta.update(gpu_meta(device))
    return meta


def gpu_meta(device) -> dict:
    """For a CUDA device: its name, memory (bytes), multiprocessors and the CUDA version ({} otherwise)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    return {"gpu_name": props.name, "gpu_memory_bytes": int(props.total_memory),
            "gpu_multiprocessors": int(props.multi_processor_count), "cuda": torch.version.cuda}
