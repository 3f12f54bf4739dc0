"""Multi-process training on torch.distributed: prompts sharded across ranks, LoRA gradients all-reduced.

Launch ``python -m progrpo train CONFIG`` under ``torchrun`` or ``accelerate launch``; both set
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``, which
:meth:`DistributedContext.from_environment` reads (NCCL on GPUs, gloo on CPU).

How one iteration is split (``P`` prompts per iteration, ``W`` ranks, ``P % W == 0``):

* every rank draws the same ``P`` prompts (same seeded generator) and keeps the contiguous block
  ``[r * P / W, (r + 1) * P / W)``: a prompt's whole group lives on one rank, so Expand-and-Prune's
  per-group previews, OVF and group-std advantages need no communication;
* the rollout draws the noise of all ``P`` groups and keeps its rows (:class:`RowShard`), and pads
  the selection inputs to all ``P`` groups, so a trajectory's noise and a random selection do not
  depend on the world size;
* final rewards are all-gathered (rank-major = the single-process order) for the global-std
  advantages and the logged statistics;
* after the local backward passes the LoRA gradients are summed across ranks, each weighted by its
  share of the global (trajectory, step) pairs, so every rank holds the gradient of the global mean
  loss and takes the identical optimiser step (what DDP's all-reduce does, in one flat bucket:
  the network is called through the denoiser, not through a DDP wrapper).

The result equals a single-process run of the same global batch and seed up to float summation
order (tests/train/test_distributed.py). Checkpoints, metrics and the exported LoRA are written by
rank 0 only; since no state depends on the world size, a checkpoint resumes on any world size that
divides ``prompts_per_iteration``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ProGRPOConfigError
from ..log import logger
from ..rollout import RowShard

#: torch.distributed backend by device type: NCCL needs CUDA tensors, gloo runs on CPU.
BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; the defaults are a single process (every method a no-op).

    Attributes:
        rank: global rank (0 writes checkpoints, metrics and outputs).
        world_size: number of processes.
        local_rank: rank on this machine (picks ``cuda:<local_rank>``).
        backend: ``"nccl"`` / ``"gloo"`` when a process group is in use, None for one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ProGRPOConfigError(
                f"rank {self.rank} of world size {self.world_size} is impossible; check RANK and WORLD_SIZE."
            )

    @classmethod
    def from_environment(cls, device: str = "cpu") -> DistributedContext:
        """The context the launcher set up (``WORLD_SIZE`` > 1), initialising the process group once.

        ``device``: the training device (``"cuda"`` selects NCCL and ``cuda:<LOCAL_RANK>``).
        Without ``WORLD_SIZE`` (or with 1) this is a single process and nothing is initialised.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
            return cls()
        if not dist.is_available():
            raise ProGRPOConfigError(
                "WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process or install a "
                "torch with distributed support."
            )
        device_type = torch.device(device).type
        if device_type not in BACKENDS:
            raise ProGRPOConfigError(
                f"multi-process training runs on {sorted(BACKENDS)} devices, not device={device!r}; set device to "
                "'cuda' (NCCL) or 'cpu' (gloo)."
            )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)  # before NCCL init: each rank owns one GPU
        if not dist.is_initialized():
            dist.init_process_group(backend=BACKENDS[device_type], init_method="env://")
            logger.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                        BACKENDS[device_type])
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   backend=dist.get_backend())

    # --- roles and shards ----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The training device of this rank: ``cuda`` (any index) becomes ``cuda:<local_rank>`` when distributed."""
        if self.enabled and torch.device(device).type == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def check_divides(self, prompts_per_iteration: int) -> None:
        """Each rank must get the same number of whole groups."""
        if prompts_per_iteration % self.world_size:
            raise ProGRPOConfigError(
                f"prompts_per_iteration={prompts_per_iteration} is not divisible by the {self.world_size} processes; "
                f"every rank trains whole prompt groups, so use a multiple of {self.world_size} (or launch "
                "a number of processes that divides it)."
            )

    def row_shard(self, total_prompts: int) -> RowShard:
        """This rank's contiguous block of the ``total_prompts`` prompts of an iteration."""
        self.check_divides(total_prompts)
        return RowShard(prompt_offset=self.rank * (total_prompts // self.world_size), total_prompts=total_prompts)

    def shard_rows(self, total_prompts: int) -> torch.Tensor:
        """Indices [P / W] of this rank's prompts in the iteration's batch of ``total_prompts``."""
        shard = self.row_shard(total_prompts)
        return torch.arange(shard.prompt_offset, shard.prompt_offset + total_prompts // self.world_size)

    # --- collectives -----------------------------------------------------------------------------

    def _comm_device(self, tensor: torch.Tensor) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation along dim 0 of every rank's ``tensor`` [N_r, ...], rank-major (equal shapes).

        Returned on ``tensor``'s device; one process returns ``tensor`` itself.
        """
        if not self.enabled:
            return tensor
        local = tensor.detach().to(self._comm_device(tensor)).contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
        if len({int(size) for size in sizes}) != 1:
            raise RuntimeError(f"all_gather needs equal shapes per rank, got row counts {[int(s) for s in sizes]}")
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of floats over ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device(torch.empty(0)))
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter], local_weight: float) -> None:
        """``grad <- sum_r w_r * grad_r`` over ranks, in one flat fp32 bucket.

        ``local_weight``: this rank's share of the global pairs (``N_r / N``); each rank's gradient
        is that of its local mean loss, so the weighted sum is the gradient of the global mean.
        Parameters without a gradient count as zeros (a rank may leave some LoRA layers unused).
        """
        if not self.enabled:
            return
        params = list(params)
        device = self._comm_device(params[0])
        grads = [p.grad.detach().float() if p.grad is not None else torch.zeros(p.shape) for p in params]
        flat = torch.cat([grad.reshape(-1).to(device) for grad in grads]) * local_weight
        dist.all_reduce(flat)
        offset = 0
        for param in params:
            count = param.numel()
            reduced = flat[offset: offset + count].view(param.shape).to(device=param.device, dtype=param.dtype)
            if param.grad is None:
                param.grad = reduced.clone()
            else:
                param.grad.copy_(reduced)
            offset += count

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Destroy the process group (launchers expect it at the end of a run)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = DistributedContext()
