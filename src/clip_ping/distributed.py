"""torchrun process groups and feature gathering for contrastive losses.

One process: nothing to do. Under ``torchrun --nproc_per_node G``: NCCL on GPUs, gloo on
CPU; each rank reads its part of the data and the contrastive logits are built over the
gathered global batch.

    torchrun --nproc_per_node 8 -m clip_ping.cli train --config configs/cc3m-vit-xs.yaml
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from .errors import UserError, short_repr


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``--device`` (auto | cpu | cuda | cuda:N | another torch device) as a device that
    exists here; an error naming the value otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {short_repr(name)} is no device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices here "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, resolved)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(tensor: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """``(B, ...)`` per rank → ``(world * B, ...)`` in rank order.

    ``with_grad`` keeps the graph through the gather (every rank's features receive
    gradients from every rank's loss); without it, only the local slice does.
    """
    if not is_distributed():
        return tensor
    if with_grad:  # backward: every rank's gradient for this rank's slice, summed
        return torch.cat(dist_nn.all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    parts[dist.get_rank()] = tensor  # the local slice keeps its gradient
    return torch.cat(parts, dim=0)


T = TypeVar("T")


def share_from_main(work: Callable[[], T], is_main: bool) -> T:
    """Run ``work()`` on rank 0 alone and give every rank its result (one process: just
    ``work()``). If it fails, every rank raises the same error, so no rank waits for one
    that has stopped."""
    result, error = None, None
    if is_main:
        try:
            result = work()
        except Exception as exc:
            error = exc
    if is_distributed():
        box = [(result, None if error is None else (type(error), str(error)))]
        dist.broadcast_object_list(box, src=0)
        result, shared = box[0]
        if shared is not None and error is None:
            kind, message = shared
            try:
                error = kind(message)
            except Exception:  # an error class that needs other arguments
                error = RuntimeError(message)
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
