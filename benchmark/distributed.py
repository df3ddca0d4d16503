"""torchrun helpers: every function is safe in a single process with no process group."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None, init_method: str = "env://") -> bool:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK; False when not launched by torchrun.

    The backend is nccl when CUDA is available, else gloo; on CUDA each process
    takes the GPU LOCAL_RANK.
    """
    if is_distributed():
        return True
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return False
    rank = int(os.environ["RANK"])
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), init_method=init_method,
                            rank=rank, world_size=world_size)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def save_on_main(obj: Any, path: str | Path) -> None:
    """torch.save on rank 0 only."""
    if is_main_process():
        torch.save(obj, path)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over ranks (the values themselves in a single process)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_rows(rows: np.ndarray, indices: np.ndarray, total: int) -> np.ndarray:
    """Assemble a (total, D) array from every rank's rows, row i of `rows` going to position indices[i].

    Each rank holds the same number of rows (DistributedSampler pads by repeating
    indices; a repeated index gets the same row twice, which is harmless). Raises
    RuntimeError when some position receives no row.
    """
    if len(rows) != len(indices):
        raise RuntimeError(f"gather_rows: {len(rows)} rows but {len(indices)} indices")
    if is_distributed():
        device = _collective_device()
        parts_rows = _all_gather_tensor(torch.from_numpy(np.ascontiguousarray(rows)).to(device))
        parts_indices = _all_gather_tensor(torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(device))
        rows = np.concatenate([part.cpu().numpy() for part in parts_rows])
        indices = np.concatenate([part.cpu().numpy() for part in parts_indices])
    if len(indices) == total and np.array_equal(indices, np.arange(total)):
        return rows
    out = np.empty((total, *rows.shape[1:]), dtype=rows.dtype)
    filled = np.zeros(total, dtype=bool)
    out[indices] = rows
    filled[indices] = True
    if not filled.all():
        raise RuntimeError(f"gather_rows: {int((~filled).sum())} of {total} positions received no row")
    return out


def _collective_device() -> torch.device:
    """Where tensors must live for the process group's collectives: the GPU for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order; gradients flow back to each rank's part.

    The tensor itself in a single process. Contrastive losses use it to take
    negatives from the global batch.
    """
    if not is_distributed():
        return tensor
    import torch.distributed.nn.functional as dist_nn
    return torch.cat(dist_nn.all_gather(tensor), dim=0)
