"""Device, mixed-precision and data-loading policy, shared by feature extraction and training.

On CUDA: bf16 autocast (fp16 with a gradient scaler on request), channels_last,
pinned memory. On the CPU: plain fp32, contiguous tensors. Under torchrun each
process reads its own shard through a DistributedSampler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.utils.data

from benchmark import distributed
from benchmark.errors import SslBenchError

AmpMode = Literal["auto", "bf16", "fp16", "off"]


def resolve_device(requested: str) -> torch.device:
    """auto -> the process's GPU when CUDA is available, else the CPU; cuda[:N] asked for without that GPU is an error."""
    index = requested.removeprefix("cuda:")
    if requested not in ("auto", "cpu", "cuda") and not (requested.startswith("cuda:") and index.isdigit()):
        raise SslBenchError(f"--device must be auto, cpu or cuda[:N], got '{requested}'")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SslBenchError(f"--device {requested}: CUDA is not available on this machine (torch "
                            f"{torch.__version__}); pass --device cpu or --device auto")
    if requested in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if int(index) >= torch.cuda.device_count():
        raise SslBenchError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s), "
                            f"numbered from 0; pass --device cuda:0 or --device auto")
    return torch.device("cuda", int(index))


@dataclasses.dataclass(frozen=True)
class AmpPolicy:
    """How a device computes: autocast dtype (None for fp32), gradient scaling and memory format."""

    device_type: str
    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device, mode: AmpMode = "auto") -> AmpPolicy:
        """auto: bf16 on CUDA, fp32 on the CPU; bf16 on request anywhere; fp16 (with a scaler) on CUDA only."""
        if mode not in ("auto", "bf16", "fp16", "off"):
            raise SslBenchError(f"amp must be auto, bf16, fp16 or off, got '{mode}'")
        on_cuda = device.type == "cuda"
        dtype = None
        if mode == "bf16" or (mode == "auto" and on_cuda):
            dtype = torch.bfloat16
        elif mode == "fp16" and on_cuda:
            dtype = torch.float16
        return cls(device.type, dtype, channels_last=on_cuda)

    @property
    def uses_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def prepare_input(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Move a batch of images to the device, channels_last where that is faster."""
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> dict[str, Any]:
        return {"autocast": str(self.dtype).removeprefix("torch.") if self.dtype else "off",
                "grad_scaler": self.uses_scaler, "channels_last": self.channels_last}


def eval_loader(images: torch.utils.data.Dataset, batch_size: int, workers: int, device: torch.device,
                collate_fn: Callable[[list], Any] | None = None
                ) -> tuple[torch.utils.data.DataLoader, int]:
    """An in-order loader over this process's shard, and how many items the shard holds (padded under DDP)."""
    sampler = None
    rows = len(images)  # type: ignore[arg-type]
    if distributed.get_world_size() > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(images, shuffle=False, drop_last=False)
        rows = len(sampler)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, sampler=sampler,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         collate_fn=collate_fn)
    return loader, rows


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Model in eval mode (BatchNorm statistics frozen) for the block; its training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Turn an SslBenchError re-raised from a DataLoader worker (message plus traceback) back into one line."""
    try:
        yield
    except SslBenchError as error:
        text = str(error)
        if "Original Traceback" not in text:
            raise
        raise type(error)(_original_message(text, type(error))) from None


def _original_message(text: str, kind: type) -> str:
    pattern = re.compile(rf"^(?:[\w.]+\.)?{re.escape(kind.__qualname__)}: (.*)$")
    for line in reversed(text.splitlines()):
        match = pattern.match(line)
        if match:
            return match.group(1)
    return text.strip().splitlines()[-1]
