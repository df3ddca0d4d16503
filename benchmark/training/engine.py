"""The one training loop every training protocol and pretraining recipe runs on.

A caller hands `Trainer.fit` a model, a dataset of (image, index, ...) items and
a step function (model, batch) -> loss or (loss, {name: scalar}). The same code
runs on the CPU, one GPU, or many under torchrun (DDP, DistributedSampler,
optional SyncBatchNorm), with AMP on CUDA. It saves a training state every
`save_every` optimiser steps and at each epoch end; with `resume` it continues
from it and, on the CPU, ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.data
from torch import nn

from benchmark import distributed
from benchmark.accel import AmpMode, AmpPolicy, worker_errors
from benchmark.errors import SslBenchError
from benchmark.training.optim import OptimSpec, build_optimizer, build_scheduler, parameter_groups
from benchmark.training.sampling import ResumableSampler
from benchmark.training.state import STATE_NAME, capture_rng, load_state, restore_rng, save_state

StepFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
EpochHook = Callable[[int], "dict[str, float]"]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything the loop needs besides model, data and loss; recorded in every result that trains."""

    optim: OptimSpec
    batch_size: int = 256  # global: over processes and accumulation steps
    epochs: int = 1
    max_steps: int | None = None  # optimiser steps; when set, it overrides epochs
    milestone_epochs: tuple[int, ...] = ()  # step-schedule milestones in epochs (else optim.milestones, in steps)
    warmup_epochs: float = 0.0  # linear warmup in epochs (else optim.warmup_steps)
    accumulate: int = 1
    clip_grad_norm: float | None = None
    amp: AmpMode = "auto"
    sync_bn: bool = False
    find_unused_parameters: bool = False
    save_every: int = 200  # optimiser steps between training states
    log_every: int = 50
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "accumulate", "save_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: expected an integer >= 1, got {self.max_steps!r}")

    def per_process_batch(self, world_size: int) -> int:
        """Images per forward on one process; the global batch must split evenly."""
        parts = world_size * self.accumulate
        if self.batch_size % parts:
            raise SslBenchError(f"batch_size {self.batch_size} does not split over {world_size} processes x "
                                f"{self.accumulate} accumulation steps; pick a multiple of {parts}")
        return self.batch_size // parts

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Position:
    """Where training stands: optimiser steps done, epoch, batches of that epoch done, its running sums."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    lr: float = 0.0  # of the last optimiser step
    extras: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainResult:
    """What a finished fit returns: per-epoch history, steps run, and whether it resumed."""

    history: list[dict[str, Any]]
    steps: int
    resumed_from_step: int | None
    seconds: float


class Trainer:
    """Runs one training job; `fit` returns its history. Only rank 0 writes states, logs and TensorBoard."""

    def __init__(self, model: nn.Module, spec: TrainSpec, device: torch.device, run_dir: Path,
                 identity: dict[str, Any], resume: bool = False, log: Callable[[str], None] | None = None,
                 progress: Callable[..., Any] | None = None) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.run_dir = Path(run_dir)
        self.identity = identity
        self.resume = resume
        quiet = not distributed.is_main_process()  # under torchrun only rank 0 shows a bar and logs
        self.log = (lambda message: None) if quiet or log is None else log
        self.progress = (lambda iterable, **kwargs: iterable) if quiet or progress is None else progress
        self.policy = AmpPolicy.for_device(self.device, spec.amp)
        self.model = self._prepare(model)
        self.board = _TensorBoard(self.run_dir / "tensorboard")

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_NAME

    def _prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.spec.sync_bn and distributed.get_world_size() > 1:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log("sync_bn: SyncBatchNorm needs CUDA; BatchNorm statistics stay per process on the CPU")
        return self.policy.prepare_model(model)

    def _wrap(self) -> nn.Module:
        if distributed.get_world_size() == 1:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                   find_unused_parameters=self.spec.find_unused_parameters)

    def fit(self, dataset: torch.utils.data.Dataset, step_fn: StepFn,
            collate_fn: Callable[[list], Any] | None = None, on_epoch_end: EpochHook | None = None,
            parameters: list[dict] | None = None, on_epoch_start: Callable[[int], None] | None = None
            ) -> TrainResult:
        """Train to the end of the schedule (resuming when asked and a state exists); return the history.

        `parameters` overrides the default groups (trainable parameters; BN and
        biases without weight decay when the spec says so). on_epoch_start(epoch)
        runs before an epoch's first batch (not again when resuming mid-epoch:
        what it computes must live in the model's buffers to be saved);
        on_epoch_end(epoch) returns metrics for the history.
        """
        spec, started = self.spec, time.perf_counter()
        world = distributed.get_world_size()
        micro_batch = spec.per_process_batch(world)
        sampler = ResumableSampler(dataset, seed=spec.seed, shuffle=True, drop_last=True)
        batches_per_epoch = sampler.num_samples // micro_batch
        steps_per_epoch = batches_per_epoch // spec.accumulate
        if steps_per_epoch == 0:
            raise SslBenchError(f"{len(dataset)} training images make no full batch of {spec.batch_size}; "  # type: ignore[arg-type]
                                "lower batch_size or use more images")
        total_steps = spec.max_steps or spec.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
        groups = parameters or parameter_groups(self.model, spec.optim.weight_decay, spec.optim.no_decay_norm_and_bias)
        if not groups:
            raise RuntimeError("the model has no trainable parameters")
        optimizer = build_optimizer(groups, spec.optim)
        optim = spec.optim
        if spec.milestone_epochs:
            optim = dataclasses.replace(optim, milestones=tuple(e * steps_per_epoch for e in spec.milestone_epochs))
        if spec.warmup_epochs:
            optim = dataclasses.replace(optim, warmup_steps=round(spec.warmup_epochs * steps_per_epoch))
        scheduler = build_scheduler(optimizer, optim, total_steps)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.policy.uses_scaler)
        wrapped = self._wrap()

        position, history, resumed_from = Position(), [], None
        if self.resume and self.state_path.is_file():
            state = load_state(self.state_path, self.identity)
            load_changing_state(self.model, state["model"], self.state_path)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            position = Position(**state["position"])
            history = list(state["history"])
            restore_rng(state["rng"])
            resumed_from = position.step
            self.log(f"resuming training from step {position.step} (epoch {position.epoch + 1}, "
                     f"batch {position.batch}) of {self.state_path}")
        elif self.state_path.is_file():
            self.log(f"a training state exists at {self.state_path}; starting over (pass --resume to continue it)")

        def save() -> None:
            if distributed.is_main_process():
                save_state(self.state_path, {
                    "identity": self.identity, "model": changing_state(self.model),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "position": dataclasses.asdict(position),
                    "history": history, "rng": capture_rng()})
            distributed.barrier()

        board = self.board
        board.purge_step = position.step
        try:
            while position.step < total_steps:
                if on_epoch_start is not None and position.batch == 0:
                    on_epoch_start(position.epoch)
                self._run_epoch(wrapped, dataset, sampler, micro_batch, steps_per_epoch, total_steps, epochs,
                                position, step_fn, collate_fn, optimizer, scheduler, scaler, board, save)
                if position.batch < steps_per_epoch * spec.accumulate and position.step < total_steps:
                    continue
                entry = {"epoch": position.epoch + 1, "step": position.step, **_epoch_means(position),
                         "lr": position.lr}
                if on_epoch_end is not None:
                    entry.update(on_epoch_end(position.epoch))
                history.append(entry)
                board.scalars({f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "step")},
                              position.step)
                self.log(f"epoch {position.epoch + 1}/{epochs}  " + "  ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in entry.items() if k != "epoch"))
                position = Position(step=position.step, epoch=position.epoch + 1)
                save()
        finally:
            board.flush()
        return TrainResult(history, position.step, resumed_from, time.perf_counter() - started)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Write scalars (final metrics, say) to the run's TensorBoard log at optimiser step `step`."""
        self.board.scalars(values, step)
        self.board.flush()

    def _run_epoch(self, wrapped: nn.Module, dataset: torch.utils.data.Dataset, sampler: ResumableSampler,
                   micro_batch: int, steps_per_epoch: int, total_steps: int, epochs: int, position: Position,
                   step_fn: StepFn, collate_fn: Callable[[list], Any] | None, optimizer: torch.optim.Optimizer,
                   scheduler: Any, scaler: torch.amp.GradScaler, board: _TensorBoard,
                   save: Callable[[], None]) -> None:
        """Run the rest of epoch `position.epoch`, updating `position` in place."""
        spec = self.spec
        sampler.set_position(position.epoch, position.batch * micro_batch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(position.epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=micro_batch, sampler=sampler, num_workers=spec.workers, collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(spec.seed + position.epoch))
        batches_left = steps_per_epoch * spec.accumulate - position.batch
        bar = self.progress(loader, desc=f"train epoch {position.epoch + 1}/{epochs}",
                            total=min(batches_left, len(loader)))
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        window_loss, window_batches, window_images = torch.zeros((), device=self.device), 0, 0
        window_started = time.perf_counter()
        for batch in _with_worker_errors(bar):
            position.batch += 1
            last_micro = position.batch % spec.accumulate == 0
            sync = contextlib.nullcontext() if last_micro or wrapped is self.model else wrapped.no_sync()
            with sync:
                with self.policy.autocast():
                    out = step_fn(wrapped, _to_device(batch, self.device, self.policy))
                loss, extras = out if isinstance(out, tuple) else (out, {})
                if not torch.isfinite(loss):
                    raise SslBenchError(f"training loss is {loss.item()} at step {position.step + 1}; "
                                        "lower the lr (--set lr=...) or check the data")
                scaler.scale(loss / spec.accumulate).backward()
            window_loss += loss.detach()
            window_batches += 1
            window_images += _batch_len(batch) * distributed.get_world_size()
            position.loss_sum += float(loss.detach())
            position.loss_count += 1
            for name, value in extras.items():
                position.extras[name] = position.extras.get(name, 0.0) + float(value)
            if not last_micro:
                continue
            if spec.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), spec.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = position.lr = scheduler.get_last_lr()[0]
            scheduler.step()
            position.step += 1
            if position.step % spec.log_every == 0 or position.step == total_steps:
                loss_value = float(window_loss) / window_batches
                speed = window_images / max(time.perf_counter() - window_started, 1e-9)
                board.scalars({"train/loss": loss_value, "train/lr": lr, "train/images_per_s": speed}, position.step)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
                if getattr(bar, "disable", True):  # no visible bar (not a terminal): one log line instead
                    self.log(f"step {position.step}/{total_steps}  loss {loss_value:.4f}  lr {lr:.4g}  "
                             f"{speed:.0f} img/s")
                window_loss.zero_()
                window_batches, window_images, window_started = 0, 0, time.perf_counter()
            if position.step % spec.save_every == 0 or position.step == total_steps:
                save()
            if position.batch >= steps_per_epoch * spec.accumulate or position.step >= total_steps:
                break


class _TensorBoard:
    """SummaryWriter on rank 0, nothing elsewhere; created on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.purge_step = 0
        self._writer: Any = None

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if not distributed.is_main_process():
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_step or None)
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def changing_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its frozen sub-networks: those held in eval mode with no trainable parameter.

    So a linear probe's training state holds its heads, not the trunk; an EMA
    target network (no grad, but in training mode) is kept.
    """
    frozen = [f"{name}." for name, module in model.named_modules()
              if name and not module.training and not any(p.requires_grad for p in module.parameters())]
    return {key: value for key, value in model.state_dict().items()
            if not any(key.startswith(prefix) for prefix in frozen)}


def load_changing_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Put back what `changing_state` saved; every saved key must belong to the model."""
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise SslBenchError(f"training state {path} holds weights this model lacks ({unexpected[0]}, ...); "
                            "run without --resume to start over")


def _with_worker_errors(batches: Any) -> Any:
    """Iterate a loader, turning an SslBenchError from a worker (a corrupt image, say) into one line."""
    with worker_errors():
        yield from batches


def _epoch_means(position: Position) -> dict[str, float]:
    """Mean loss and extras per batch over the epoch, averaged over every process's batches."""
    names = sorted(position.extras)
    sums = distributed.all_reduce_sum([position.loss_count, position.loss_sum,
                                       *[position.extras[n] for n in names]])
    count = max(1.0, sums[0])
    return {"loss": sums[1] / count, **{name: total / count for name, total in zip(names, sums[2:])}}


def _to_device(batch: Any, device: torch.device, policy: AmpPolicy) -> Any:
    """Tensors of a (nested) batch moved to the device; 4-D image batches channels_last on CUDA."""
    if isinstance(batch, torch.Tensor):
        return policy.prepare_input(batch, device) if batch.is_floating_point() else batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device, policy) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(item, device, policy) for key, item in batch.items()}
    return batch


def _batch_len(batch: Any) -> int:
    """Images in a batch: the length of its first tensor, depth first (the first view of a tuple of views)."""
    while isinstance(batch, (list, tuple, dict)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)
