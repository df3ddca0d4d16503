"""pretrain(options) -> a native checkpoint: one recipe trained on one dataset's training split, on the engine.

Like the runner, it never names a recipe, dataset or architecture: it talks to
the registries and the Recipe interface only.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.accel import resolve_device
from benchmark.config import build_config, config_to_dict
from benchmark.errors import SslBenchError
from benchmark.protocol import InputSpec
from benchmark.registry import DATASETS, RECIPES
from benchmark.training import SeededAugmentation, Trainer
from benchmark.training.state import STATE_NAME

CHECKPOINT_NAME = "checkpoint.pth"


@dataclasses.dataclass
class PretrainOptions:
    """Everything `ssl-bench pretrain` accepts, with the CLI's defaults."""

    recipe: str
    out: Path
    dataset: str = "fashion_mnist"
    data_root: Path | None = None
    arch: str = "resnet18_cifar"
    epochs: int | None = None
    batch_size: int | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    limit: int | None = None
    eval_every: int = 0  # epochs between kNN checks (0: none)
    eval_limit: int = 2000  # images per split of the kNN check
    max_steps: int | None = None  # optimiser steps; when set, the schedule spans them instead of `epochs`


def pretrain(options: PretrainOptions, progress_factory: Callable[..., Any] | None = None,
             log: Callable[[str], None] | None = None) -> Path:
    """Train the recipe, write OUT/checkpoint.pth (native format: trunk, heads apart, recipe, config); return it."""
    from benchmark.distributed import init_distributed, is_main_process
    from benchmark.runner import seed_everything
    from checkpoints.formats import save_native
    from checkpoints.models import build_seeded

    log = log or (lambda message: None)
    started = time.perf_counter()
    recipe_cls = RECIPES.get(options.recipe)
    overrides = dict(options.overrides)
    for key, value in (("epochs", options.epochs), ("batch_size", options.batch_size)):
        if value is not None:
            overrides[key] = value
    config = build_config(recipe_cls.Config, overrides, owner=f"recipe '{options.recipe}'")
    out = Path(options.out)
    _check_out(out, options)

    dataset = DATASETS.get(options.dataset)(root=options.data_root, limit=options.limit, seed=options.seed)
    split = dataset.train_split
    images = dataset.open_split(split, None)
    if len(images) == 0:
        raise SslBenchError(f"split '{split}' of dataset '{options.dataset}' yields no images; "
                            "check --data-root and --limit")
    if config.batch_size > len(images):
        raise SslBenchError(f"batch size {config.batch_size} is larger than the {len(images)} images of split "
                            f"'{split}' of '{options.dataset}'; pass --batch-size {len(images)} or less")

    distributed = init_distributed()
    device = resolve_device(options.device)
    seed_everything(options.seed)
    trunk = build_seeded(options.arch, seed=options.seed)
    mean, std = dataset.normalization or (trunk.mean, trunk.std)
    input_spec = InputSpec(dataset.native_size or trunk.input_size, tuple(mean), tuple(std))
    recipe = recipe_cls()
    model = recipe.build(trunk, config, len(images))
    # the views are cut from the frame the evaluation shows (Fashion-MNIST: padded to 32x32), not the bare image
    images = dataset.open_split(split, dataset.frame_transform(input_spec.size))
    chosen = model.training_indices()  # the dataset items keep their index in the split
    trained = images if chosen is None else torch.utils.data.Subset(images, chosen.tolist())
    # views may be smaller than the evaluation's frame (view_size): cheaper steps, and random crops then show
    # objects at about the scale the evaluation sees them (Touvron et al. 2019, "FixRes")
    view_spec = dataclasses.replace(input_spec, size=config.view_size) if config.view_size else input_spec
    data = SeededAugmentation(trained, recipe.views(config, view_spec, dataset), seed=options.seed)
    config_dict = config_to_dict(config)
    identity = {"recipe": options.recipe, "recipe_version": recipe_cls.version, "arch": options.arch,
                "dataset": dataset.digest(), "seed": options.seed,
                **{f"config.{key}": value for key, value in config_dict.items()},
                **({"max_steps": options.max_steps} if options.max_steps is not None else {})}
    spec = dataclasses.replace(config.train_spec(options.seed, sync_bn=recipe_cls.sync_bn), workers=options.workers,
                               max_steps=options.max_steps)
    trainer = Trainer(model, spec, device, out, identity, resume=options.resume, log=log,
                      progress=progress_factory)
    eval_limit = min(options.eval_limit, options.limit or options.eval_limit)
    eval_data = DATASETS.get(options.dataset)(root=options.data_root, limit=eval_limit, seed=options.seed)
    check = KnnCheck(trainer.model.trunk, eval_data, input_spec, device, log) if options.eval_every else None

    def on_epoch_end(epoch: int) -> dict[str, float]:
        if check is None or (epoch + 1) % options.eval_every:
            return {}
        return check()

    result = trainer.fit(data, lambda m, batch: m(*batch), on_epoch_end=on_epoch_end,
                         on_epoch_start=trainer.model.on_epoch_start)
    path = out / CHECKPOINT_NAME
    if is_main_process():
        meta = {"recipe": options.recipe, "recipe_version": recipe_cls.version, "paper": recipe_cls.paper,
                "config": config_dict, "epoch": len(result.history), "steps": result.steps,
                "dataset": {"name": options.dataset, "digest": dataset.digest(), "split": split,
                            "images": len(images), "limit": options.limit},
                "input": input_spec.describe(), "mean": list(input_spec.mean), "std": list(input_spec.std),
                "seed": options.seed, "training": {"spec": spec.describe(), "history": result.history,
                                                   "resumed_from_step": result.resumed_from_step,
                                                   "seconds": round(time.perf_counter() - started, 3),
                                                   "distributed": distributed}}
        save_native(path, trainer.model.trunk_state(), options.arch, meta=_json_ready(meta),
                    heads=trainer.model.head_state())
        (out / STATE_NAME).unlink(missing_ok=True)
    return path


def _check_out(out: Path, options: PretrainOptions) -> None:
    """Refuse to overwrite a finished run unless --resume (a no-op) or --overwrite; make the folder."""
    finished = out / CHECKPOINT_NAME
    if out.exists() and not out.is_dir():
        raise SslBenchError(f"--out {out} is a file; pass a folder")
    if finished.exists() and not (options.resume or options.overwrite):
        raise SslBenchError(f"--out {out} holds a finished run ({finished}); pass --overwrite to replace it, "
                            "or another --out")
    if finished.exists() and options.overwrite:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SslBenchError(f"cannot create --out {out} ({error.strerror})") from None


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class KnnCheck:
    """kNN top-1 (K=20, T=0.07) of the trunk's res5avg, train split against test split of a (limited) dataset."""

    def __init__(self, trunk: torch.nn.Module, dataset: Any, input_spec: InputSpec, device: torch.device,
                 log: Callable[[str], None]) -> None:
        self.trunk, self.dataset, self.device, self.log = trunk, dataset, device, log
        self.transform = input_spec.eval_transform(dataset)

    def __call__(self) -> dict[str, float]:
        from benchmark.features import FeatureExtractor
        from protocols.knn import WeightedKnn
        frozen = copy.deepcopy(self.trunk).eval()
        extractor = FeatureExtractor(frozen, "pretraining", self.device, cache_dir=None, batch_size=256)
        data = self.dataset
        train = extractor.extract(data, data.train_split, ["res5avg"], self.transform, "knn-check")
        test = extractor.extract(data, data.test_split, ["res5avg"], self.transform, "knn-check")
        knn = WeightedKnn(k_max=20, temperature=0.07).fit(train.features["res5avg"], train.labels)
        top1 = 100.0 * float(np.mean(knn.predict(test.features["res5avg"], 20) == test.labels))
        self.log(f"kNN check: top1_k20 {top1:.2f} on {len(test)} images")
        return {"knn_top1_k20": top1}
