"""Process-group set-up and the autograd-aware feature gather (docs/behaviour.md §10).

Launch::

    torchrun --nproc_per_node=N main_retrieval.py ...          # RANK, WORLD_SIZE, LOCAL_RANK env
    python -m torch.distributed.launch --nproc_per_node=N ...   # legacy: --local_rank argument

:func:`init_distributed` reads the launcher's environment (the legacy launcher's ``--local_rank``
argument stands in when ``LOCAL_RANK`` is not set), joins the process group (NCCL on CUDA, gloo on
CPU) and returns a :class:`DistContext`. Without a launcher (no ``WORLD_SIZE`` > 1) it sets up a
single process and no process group; every helper here is then a no-op.

Gathering and gradients. Every rank encodes its share of the global batch, then text and video
features are gathered with :func:`gather_with_grad` so that each rank computes the loss of the
whole B x B matrix, identically. The gather is ``torch.distributed.nn.functional.all_gather``,
whose backward SUMS the gradient that every rank sends to each slice (a reduce-scatter):

- an encoder parameter on rank r receives W * g_r, where g_r is the gradient of the global loss
  through rank r's own samples and W the world size; DDP then averages over ranks:
  (1/W) * sum_r W * g_r = sum_r g_r, the single-process gradient;
- a parameter used after the gather (Psi, logit_scale) receives the full gradient on every rank,
  and DDP's average of W equal copies is that gradient again.

So the loss is NOT multiplied by the world size: gradients equal those of one process running
the global batch (checked to 1e-5 by tests/test_distributed.py). The reference's ``AllGather``
returns only the rank's own slice of the gradient in backward, so after DDP's average its encoder
gradients are those of one process divided by W (its Psi gradients are right); multiplying the
loss by W would fix the encoders but scale Psi by W, hence this gather instead (docs/behaviour.md
§12).

Dropout after the gather (Psi's) draws one mask per rank; the ranks draw the same mask, as a
single process would, when every rank is seeded alike (the recipe seeds all ranks with --seed).
The loss returned on every rank is the global-batch loss, so logging it needs no reduction.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: global ``rank`` of ``world_size``, GPU index on its node."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(local_rank: Optional[int] = None, device: Optional[str] = None) -> DistContext:
    """Join the process group the launcher set up, or run as a single process.

    ``local_rank``: the legacy launcher's ``--local_rank`` argument (``LOCAL_RANK`` in the
    environment wins when both are present). ``device``: "cuda" or "cpu" (default: CUDA when
    available); the backend follows it: NCCL for CUDA, gloo for CPU. On CUDA the process uses
    GPU ``local_rank``. Calling it again once the group exists returns the same context.
    """
    device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: this torch build sees no CUDA device (torch "
                           f"{torch.__version__}); use --device cpu or auto")
    env = os.environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else (local_rank or 0)
    if device_type == "cuda":
        torch.cuda.set_device(local)
        torch_device = torch.device("cuda", local)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                init_method="env://", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local, torch_device)


def check_batch_size(global_batch: int, world_size: int, flag: str = "--batch_size") -> int:
    """The per-process share of a GLOBAL batch; a clear error when it does not divide."""
    if global_batch < 1 or global_batch % world_size:
        lower = max(world_size, global_batch // world_size * world_size)
        raise ValueError(
            f"{flag} {global_batch} is the GLOBAL batch, split evenly over the {world_size} "
            f"processes, so it must be a positive multiple of {world_size} "
            f"(e.g. {lower} or {lower + world_size})")
    return global_batch // world_size


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, keeping the gradient path.

    Every rank must pass the same shape (DistributedSampler gives every rank the same number of
    samples). Tensors that do not require grad (masks, ids, evaluation features) go through a
    plain all-gather. Single process: ``tensor`` itself.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    if tensor.requires_grad:
        # Deprecated in recent torch in favour of _functional_collectives.all_gather_single,
        # which is not autograd-aware in every torch >= 2.1 that this project supports.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_fn.all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def share_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's ``size`` (e.g. the items its batch kept), in rank order; ``[size]`` for a
    single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [size]
    sizes = torch.tensor([size], device=device)
    parts = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sizes)
    return [int(p) for p in parts]


def gather_rows(tensor: Tensor, sizes: list[int]) -> Tensor:
    """:func:`gather_with_grad` for shares of different sizes: rank r passes ``sizes[r]``
    rows (:func:`share_sizes`). Each share is zero-padded to the largest, gathered, and the
    padding dropped, so the result is every rank's rows in rank order, with their gradient
    paths (the padding's gradient is discarded)."""
    if len(sizes) == 1:
        return tensor
    largest = max(sizes)
    if min(sizes) == largest:
        return gather_with_grad(tensor)
    pad = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
    gathered = gather_with_grad(torch.cat([tensor, pad]))
    return torch.cat([gathered[r * largest:r * largest + n] for r, n in enumerate(sizes)])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if dist.is_initialized():
        if dist.get_backend() == dist.Backend.NCCL:
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
