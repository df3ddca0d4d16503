"""The training engine: one loop (engine), optimisers and schedules (optim), resumable data order (sampling), states (state)."""

from benchmark.training.engine import TrainResult, Trainer, TrainSpec
from benchmark.training.optim import OptimSpec, parameter_groups
from benchmark.training.sampling import ResumableSampler, SeededAugmentation

__all__ = ["OptimSpec", "ResumableSampler", "SeededAugmentation", "TrainResult", "TrainSpec", "Trainer",
           "parameter_groups"]
