"""Distributed training with torch's own pieces: torchrun init, FSDP2 per decoder layer, rank sharding of rows,
metric reduction, sharded checkpoints (``torch.distributed.checkpoint``) and a consolidated HF export.

Gradient normalisation: a wrapped model SUMS gradients over ranks (FSDP2's default is the mean). Each rank's loss
is the sum of its token losses divided by :func:`global_token_count`, so the summed gradient is exactly the
gradient of the token-mean over the global batch, whatever the number of loss tokens on each rank; one process
uses the same formula (the global count is then the local one).

Multi-node is torchrun's rendezvous, run on every node (the checkpoint directory must be on a shared filesystem)::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m refinery.cli ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from refinery.engine.device import check_precision, resolve_device
from refinery.errors import CheckpointError, ConfigError

_META = "refinery_meta.json"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; ``world_size == 1`` is the plain single-process path."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the torchrun job described by RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (gloo on CPU; NCCL for
    CUDA tensors plus gloo for CPU ones). Without WORLD_SIZE, or with 1, nothing is initialised."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not _initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="cuda:nccl,cpu:gloo", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return not _initialized() or dist.get_rank() == 0


def barrier() -> None:
    if _initialized():
        dist.barrier()


def destroy() -> None:
    if _initialized():
        dist.destroy_process_group()


def shard_rows(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous block of ``range(n)``; block sizes differ by at most one, lower ranks get the extra."""
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"shard_rows needs n >= 0 and 0 <= rank < world_size, got {n=}, {rank=}, {world_size=}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: modules whose class is in ``model._no_split_modules`` (HF), else the
    ``nn.ModuleList`` at ``model.model.layers`` / ``model.layers``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if layers:
        return layers
    for owner in (getattr(model, "model", None), model):
        found = getattr(owner, "layers", None)
        if isinstance(found, nn.ModuleList):
            return list(found)
    return []


def wrap_model(model: nn.Module, env: DistEnv, precision: str = "fp32") -> nn.Module:
    """Move ``model`` to ``env.device``; with several ranks, shard it with FSDP2 (``fully_shard`` on each decoder
    layer, then the root). bf16 gathers parameters in bf16 and reduces gradients in fp32; the sharded parameters
    and optimizer state stay fp32. Gradients are summed over ranks: normalise the loss with
    :func:`global_token_count`."""
    check_precision(precision, env.device)
    model = model.to(env.device)
    if env.world_size <= 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    kwargs = {"mesh": mesh}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # SUM, not FSDP2's AVG: the loss already carries the global normalisation. A divide factor of 1
            # alone makes FSDP2 use ReduceOp.PREMUL_SUM, which gloo rejects ("Cannot use ReduceOp.PREMUL_SUM
            # with Gloo"); forcing sum reductions makes it a plain SUM on gloo and NCCL alike.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def _reduce_device() -> torch.device:
    """Where scalar collectives run: CPU when the group has gloo (init_distributed's does), else the GPU."""
    if not _initialized() or "gloo" in str(dist.get_backend()) or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(value: torch.Tensor | float) -> torch.Tensor | float:
    """The sum over ranks of ``value`` (a float comes back as a float; a tensor as a new tensor, the input is kept)."""
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        if _initialized():
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
    if not _initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def reduce_metrics(metrics: Mapping[str, float], weights: float | Mapping[str, float] | None = None) -> dict:
    """Mean over ranks of each metric, weighted by this rank's ``weights`` (one number, or one per key; e.g. its
    token count) when given. One all-reduce; every rank gets the same dict. All ranks must pass the same keys."""
    keys = sorted(metrics)
    if weights is None:
        w = [1.0] * len(keys)
    elif isinstance(weights, Mapping):
        w = [float(weights[k]) for k in keys]
    else:
        w = [float(weights)] * len(keys)
    if not _initialized():
        return {k: float(metrics[k]) for k in keys}
    packed = torch.tensor([float(metrics[k]) * wk for k, wk in zip(keys, w)] + w, dtype=torch.float64,
                          device=_reduce_device())
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    sums, totals = packed[: len(keys)].tolist(), packed[len(keys):].tolist()
    return {k: (s / t if t else float("nan")) for k, s, t in zip(keys, sums, totals)}


def global_token_count(mask: torch.Tensor) -> float:
    """The number of loss tokens (the sum of ``mask``) over all ranks: divide each rank's summed token loss by it."""
    local = mask.detach().sum().to(torch.float64)
    if not _initialized():
        return float(local.item())
    local = local.reshape(1).to(_reduce_device())
    dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return float(local.item())


@contextlib.contextmanager
def _dcp_quiet():
    """DCP warns that it 'assumes the intent' of one process when no group exists: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _tmp_dir(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` by ``tmp`` (rank 0, after every rank has written)."""
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def _prepare_tmp(path: Path) -> Path:
    tmp = _tmp_dir(path)
    if is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    return tmp


def save_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                 extra: dict | None = None) -> Path:
    """Every rank writes its shards of model and optimizer state (DCP) into ``path.tmp``; rank 0 adds ``step`` and
    the JSON-serialisable ``extra`` and renames it to ``path``. Loads on any number of ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    meta = json.dumps({"step": int(step), "extra": extra or {}, "world_size": dist.get_world_size()
                       if _initialized() else 1}, indent=1)
    tmp = _prepare_tmp(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _dcp_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not _initialized())
    barrier()
    if is_main():
        (tmp / _META).write_text(meta)
        _swap_in(tmp, path)
    barrier()
    return path


def load_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Load a :func:`save_sharded` checkpoint into ``model`` and ``optimizer`` (wrapped or not, on any number of
    ranks: DCP reshards); returns ``(step, extra)``. ``path.tmp`` (an unfinished save) is never read."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / _META).is_file() and (old / _META).is_file():
        path = old  # a save stopped between its two renames: the previous checkpoint is intact
    if not (path / _META).is_file():
        raise CheckpointError(f"{path} is not a sharded checkpoint (no {_META}); an interrupted save leaves "
                              f"{_tmp_dir(path).name}, which is never loaded")
    meta = json.loads((path / _META).read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _dcp_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=not _initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(meta["step"]), dict(meta.get("extra") or {})


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU, on rank 0 (an empty dict elsewhere). Every rank must call it. Tensors
    that were already whole and on CPU (one process) share storage with the model: clone them for a snapshot."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_hf(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write a consolidated HF checkpoint (``save_pretrained``; plus the tokenizer when given) from rank 0, via
    ``out_dir.tmp`` and a rename; loads with plain ``AutoModelForCausalLM.from_pretrained``. Every rank must
    call it (the gather is collective)."""
    out = Path(out_dir)
    state = full_state_dict(model)
    tmp = _prepare_tmp(out)
    if is_main():
        model.save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _swap_in(tmp, out)
    barrier()
    return out


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The single-node launch of ``refinery <argv>`` (``argv`` as in ``sys.argv[1:]``) on ``nproc`` ranks.
    Multi-node: ``torchrun --nnodes 2 --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m
    refinery.cli ...`` on every node."""
    if int(nproc) < 1:
        raise ConfigError(f"--nproc must be >= 1, not {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(int(nproc)), "--standalone",
            "-m", "refinery.cli", *strip_nproc(argv)]


def relaunch_with_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run :func:`torchrun_command` and return its exit code (refused inside a torchrun job: no recursion)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc given inside a torchrun job: launch with either torchrun or --nproc, not both")
    return subprocess.run(torchrun_command(nproc, argv), check=False).returncode
